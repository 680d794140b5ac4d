package supervisor

import "time"

// nextShortRuns is the restart policy's memory. A run that lasted at least
// stableAfter proves the service can work, so whatever went wrong before it
// is forgotten (the count restarts at zero); a shorter run is one more in a
// row that did not.
func nextShortRuns(shortRuns int, ran, stableAfter time.Duration) int {
	if ran >= stableAfter {
		return 0
	}
	return shortRuns + 1
}

// backoffDelay is how long to wait before the next start after shortRuns
// consecutive short runs: base * 2^(shortRuns-1), capped at max. After a
// stable run (shortRuns 0) the delay is base: even a healthy service that
// exits is not restarted in a tight loop.
//
// Doubling stops at the cap rather than computing the power, so a service
// that crash-loops for days cannot overflow the duration.
func backoffDelay(base, max time.Duration, shortRuns int) time.Duration {
	if max < base {
		max = base
	}
	d := base
	for i := 1; i < shortRuns && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}
