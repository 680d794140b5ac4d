// Package ctxutil holds the small context helpers PID 1's packages share.
package ctxutil

import (
	"context"
	"time"
)

// Sleep sleeps for d or until ctx ends, whichever comes first; it returns
// ctx's error in the second case (the waits for a device, a link or a lease).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
