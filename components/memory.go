package components

import (
	"kiln/configs/node"
)

// The memory settings of a node are derived here, in one place, from the
// node's memory (NodeMemory, read by init/up before any component starts):
//
//   - each component's Go memory limit (GOMEMLIMIT) and, on small nodes,
//     GOGC;
//   - its cgroup's memory.low (protection) and memory.high (throttling);
//   - etcd's backend quota and the WAL files it keeps;
//   - the kubelet's kubeReserved, systemReserved, evictionHard and pod log
//     sizes.
//
// A node whose memory is unknown (Total 0) gets none of them: upstream's
// defaults.

const (
	mib = uint64(1) << 20
	gib = uint64(1) << 30
)

// NodeMemory is the machine's memory when the node starts.
type NodeMemory struct {
	// Total is MemTotal; 0 means unknown.
	Total uint64
	// Available is MemAvailable before any component starts: Total minus
	// it is what the kernel, PID 1 and the files a diskless node keeps in
	// RAM (its root file system) already hold. 0 means unknown.
	Available uint64
}

// MemoryShare is what one component gets of the node's memory.
type MemoryShare struct {
	// GoLimit is the component's GOMEMLIMIT in bytes (0: none). It is
	// soft: past it the Go runtime collects more often and returns freed
	// memory to the kernel sooner, but it never fails an allocation.
	GoLimit uint64
	// GOGC is the component's GOGC (0: the runtime's default, 100).
	GOGC int
	// Low is the cgroup's memory.low (0: none): memory the kernel does not
	// reclaim from the component while others (pods) have reclaimable
	// memory of their own.
	Low uint64
	// High is the cgroup's memory.high (0: none): past it the kernel
	// reclaims from the component and slows its allocations down instead
	// of letting it run the node out of memory. A throttled API server
	// recovers; one the OOM killer picked (the biggest process of a small
	// master) starts again from nothing.
	High uint64
}

// memoryRow is a component's share of the node.
type memoryRow struct {
	// div and floor: the component's Go memory limit is Total/div, at
	// least floor.
	div, floor uint64
	// noHigh leaves memory.high off: containerd's cgroup also holds the
	// pods' shims, their logs and the unpacked images, which grow with the
	// pods, not with containerd.
	noHigh bool
	// files are the bytes the component keeps in files it writes; on a
	// diskless node they are in RAM and charged to its cgroup, so
	// memory.high leaves room for them.
	files func(total uint64) uint64
}

// memoryTable: every component kiln runs (a test checks). etcd and the API
// server get the big shares; the small controllers and the node agents
// small ones, enough for a small cluster's informers.
var memoryTable = map[string]memoryRow{
	node.ComponentEtcd:              {div: 8, floor: 64 * mib, files: etcdFiles},
	node.ComponentAPIServer:         {div: 4, floor: 128 * mib, files: func(uint64) uint64 { return auditLogBytes }},
	node.ComponentControllerManager: {div: 16, floor: 48 * mib},
	node.ComponentScheduler:         {div: 32, floor: 32 * mib},
	node.ComponentCSRApprover:       {div: 32, floor: 32 * mib},
	node.ComponentKubelet:           {div: 16, floor: 48 * mib},
	node.ComponentContainerd:        {div: 16, floor: 48 * mib, noHigh: true},
	node.ComponentKubeProxy:         {div: 32, floor: 32 * mib},
	node.ComponentFlannel:           {div: 32, floor: 32 * mib},
	node.ComponentNetworkPolicy:     {div: 32, floor: 32 * mib},
	node.ComponentAPILB:             {div: 64, floor: 32 * mib}, // grows with its connections, not with the node
	node.ComponentVIP:               {div: 64, floor: 32 * mib}, // one Lease and one address
	node.ComponentMetricsServer:     {div: 32, floor: 32 * mib}, // the last scrape of every node and pod
	node.ComponentLocalStorage:      {div: 64, floor: 32 * mib}, // informers of the claims, volumes and classes
	// Tasks: a Go limit only; they end.
	node.ComponentFirewall:     {div: 32, floor: 32 * mib},
	node.ComponentAddons:       {div: 32, floor: 32 * mib},
	node.ComponentJoin:         {div: 32, floor: 32 * mib},
	node.ComponentImportImages: {div: 32, floor: 32 * mib},
}

// protectUpTo bounds the memory protection and reservations: past it, a
// node's extra memory is its pods'. (The Go limits keep growing: a big
// node's components may need more, and a limit below a live heap makes
// the runtime collect without pause.)
const protectUpTo = 4 * gib

// highRoom is the least room memory.high leaves past the Go limit.
const highRoom = 32 * mib

// smallNode: at most this much memory, memory is scarcer than CPU.
const smallNode = 1 * gib

// smallNodeGOGC is GOGC on a small node. By default the Go runtime lets
// the heap grow to twice what is live before collecting, and a component
// idles somewhere between the two. GOMEMLIMIT only trims that when a
// component reaches its limit; at 50 every component idles at most half
// again its live heap, which on a 1 GiB master is tens of MiB in the API
// server alone, for about twice the collection work. Bigger nodes keep the
// default: the collection work would cost CPU (the API server allocates
// gigabytes while it starts) for memory they have.
const smallNodeGOGC = 50

// Memory is the component's share of the node's memory; zero when the
// node's memory is unknown or the component has no row.
func Memory(c Component, env *Env) MemoryShare {
	total := env.Memory.Total
	row, ok := memoryTable[c.Name()]
	if total == 0 || !ok {
		return MemoryShare{}
	}
	ms := MemoryShare{GoLimit: row.goLimit(total)}
	if total <= smallNode {
		ms.GOGC = smallNodeGOGC
	}
	if _, task := c.(Task); task {
		return ms
	}
	// Protected: half the limit, reckoned on at most protectUpTo.
	ms.Low = mibDown(row.goLimit(min(total, protectUpTo)) / 2)
	if !row.noHigh {
		// Room past the limit for what the Go runtime does not count
		// (the kernel's memory for the process, the pages of the files
		// it reads, the program's own among them): half the limit, at
		// least highRoom; and for the component's files.
		ms.High = ms.GoLimit + max(ms.GoLimit/2, highRoom)
		if row.files != nil {
			ms.High += row.files(total)
		}
		ms.High = mibDown(ms.High)
	}
	return ms
}

func (r memoryRow) goLimit(total uint64) uint64 { return mibDown(max(total/r.div, r.floor)) }

// mibDown rounds down to whole MiB, so that every figure reads well.
func mibDown(n uint64) uint64 { return n &^ (mib - 1) }

// etcd on a node with memory: see etcdTuning.
const (
	// etcdSnapshotCount: etcd keeps the raft entries since its last
	// snapshot in memory; v3.7's default is 10000.
	etcdSnapshotCount = 5000
	etcdQuotaMin      = 128 * mib
	etcdQuotaMax      = 2 * gib // etcd's default
	// etcdWALSegment is etcd's WAL segment size (wal.SegmentSizeBytes,
	// 64 MB), preallocated: each file takes all of it at once, in RAM on a
	// diskless master.
	etcdWALSegment = 64_000_000
	// etcdSmallMaxWALs is how many WAL files etcd keeps on a node of at
	// most 2 GiB (etcd's default: 5). Files a snapshot has not covered
	// yet are never removed.
	etcdSmallMaxWALs = 2
	etcdMaxWALs      = 5
)

// etcdTuning is etcd's backend quota (an eighth of the node, within 128
// MiB and etcd's default 2 GiB: past it etcd refuses writes instead of its
// database eating a diskless master's RAM) and the number of WAL files to
// keep (0: etcd's default); both 0 when the node's memory is unknown.
func etcdTuning(total uint64) (quota uint64, maxWALs uint) {
	if total == 0 {
		return 0, 0
	}
	quota = mibDown(min(max(total/8, etcdQuotaMin), etcdQuotaMax))
	if total <= 2*gib {
		maxWALs = etcdSmallMaxWALs
	}
	return quota, maxWALs
}

// etcdFiles is what etcd's files may hold: the database up to its quota,
// and the WAL files it keeps plus the one in use and the next,
// preallocated.
func etcdFiles(total uint64) uint64 {
	quota, wals := etcdTuning(total)
	if wals == 0 {
		wals = etcdMaxWALs
	}
	return quota + uint64(wals+2)*etcdWALSegment
}

// kubeletMemory is what the kubelet's configuration says about memory.
type kubeletMemory struct {
	// KubeReserved is what the node's own components are protected
	// (the sum of their memory.low), SystemReserved what was in use before
	// they started (kernel, PID 1, a diskless node's files) plus headroom
	// for the kernel and PID 1 to grow. The pods' cgroup gets the rest of
	// the node as its memory.max (enforceNodeAllocatable: pods).
	KubeReserved, SystemReserved uint64
	// EvictionHard is the memory.available below which the kubelet evicts
	// pods: upstream's 100 MiB would be a quarter of a small worker, under
	// pressure from the start.
	EvictionHard uint64
	// LogMaxSize and LogMaxFiles bound each container's log files, which a
	// diskless node keeps in RAM (upstream: 10 MiB, 5 files).
	LogMaxSize  uint64
	LogMaxFiles int
}

// kubeletReserved is the kubelet's memory settings for the node; false
// when the node's memory is unknown.
func kubeletReserved(env *Env) (kubeletMemory, bool) {
	total := env.Memory.Total
	if total == 0 {
		return kubeletMemory{}, false
	}
	var km kubeletMemory
	for _, c := range For(&env.Config) {
		km.KubeReserved += Memory(c, env).Low
	}
	var used uint64
	if a := env.Memory.Available; a > 0 && a < total {
		used = total - a
	}
	km.SystemReserved = mibDown(used + max(total/16, 32*mib))
	km.EvictionHard = mibDown(min(total/16, 100*mib))
	// The pods keep at least a quarter of the node whatever was measured:
	// the system's reservation gives way first.
	if limit := total - total/4 - km.EvictionHard; km.KubeReserved+km.SystemReserved > limit {
		km.KubeReserved = min(km.KubeReserved, limit)
		km.SystemReserved = mibDown(limit - km.KubeReserved)
	}
	km.LogMaxSize = mibDown(min(max(total/128, 2*mib), 10*mib))
	km.LogMaxFiles = 5
	if total <= smallNode {
		km.LogMaxFiles = 2
	}
	return km, true
}
