package components

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"kiln/configs/node"
)

// memEnv is a node of the role with total memory, of which used was in use
// before its components started.
func memEnv(t *testing.T, role node.Role, total, used uint64) *Env {
	t.Helper()
	env := testEnv(t)
	env.Config.Role = role
	env.Memory = NodeMemory{Total: total, Available: total - used}
	return env
}

func byName(name string) Component {
	for _, c := range All() {
		if c.Name() == name {
			return c
		}
	}
	panic(name)
}

// Every component has a row: a new one must be given its share.
func TestMemoryTableCoversAll(t *testing.T) {
	for _, c := range All() {
		if _, ok := memoryTable[c.Name()]; !ok {
			t.Errorf("%s has no row in memoryTable", c.Name())
		}
	}
}

func TestMemoryUnknown(t *testing.T) {
	env := testEnv(t)
	for _, c := range All() {
		if ms := Memory(c, env); ms != (MemoryShare{}) {
			t.Errorf("%s: %+v with the node's memory unknown", c.Name(), ms)
		}
	}
	if _, ok := kubeletReserved(env); ok {
		t.Error("kubelet reservations with the node's memory unknown")
	}
	if q, w := etcdTuning(0); q != 0 || w != 0 {
		t.Errorf("etcd tuning %d %d with the node's memory unknown", q, w)
	}
}

// The figures for the node sizes kiln aims at, in MiB: Go limit, low,
// high for each component.
func TestMemoryShares(t *testing.T) {
	type lim struct{ goLimit, low, high uint64 }
	for _, tc := range []struct {
		name  string
		role  node.Role
		total uint64
		gogc  int
		want  map[string]lim
	}{
		{"384 MiB worker", node.RoleWorker, 384 * mib, 50, map[string]lim{
			"kubelet":        {48, 24, 80},
			"containerd":     {48, 24, 0},
			"kube-proxy":     {32, 16, 64},
			"flannel":        {32, 16, 64},
			"network-policy": {32, 16, 64},
			"join":           {32, 0, 0},
			"import-images":  {32, 0, 0},
		}},
		{"1 GiB master", node.RoleMaster, 1 * gib, 50, map[string]lim{
			"etcd":                    {128, 64, 192 + 128 + 244},
			"kube-apiserver":          {256, 128, 384 + 40},
			"kube-controller-manager": {64, 32, 96},
			"kube-scheduler":          {32, 16, 64},
			"csr-approver":            {32, 16, 64},
			"local-storage":           {32, 16, 64},
			"kubelet":                 {64, 32, 96},
			"containerd":              {64, 32, 0},
		}},
		{"2 GiB master", node.RoleMaster, 2 * gib, 0, map[string]lim{
			"etcd":           {256, 128, 384 + 256 + 244},
			"kube-apiserver": {512, 256, 768 + 40},
			"kube-scheduler": {64, 32, 96},
		}},
		// Protection stops growing at 4 GiB; the Go limits do not.
		{"16 GiB master", node.RoleMaster, 16 * gib, 0, map[string]lim{
			"etcd":           {2048, 256, 3072 + 2048 + 427},
			"kube-apiserver": {4096, 512, 6144 + 40},
			"kubelet":        {1024, 128, 1536},
		}},
	} {
		env := memEnv(t, tc.role, tc.total, 0)
		for name, want := range tc.want {
			ms := Memory(byName(name), env)
			got := lim{ms.GoLimit >> 20, ms.Low >> 20, ms.High >> 20}
			if got != want || ms.GOGC != tc.gogc {
				t.Errorf("%s: %s: limit/low/high %v MiB, GOGC %d; want %v, %d", tc.name, name, got, ms.GOGC, want, tc.gogc)
			}
		}
		for _, c := range For(&env.Config) {
			ms := Memory(c, env)
			if ms.GoLimit < 32*mib || ms.Low > ms.GoLimit || (ms.High != 0 && ms.High < ms.GoLimit) {
				t.Errorf("%s: %s: %+v", tc.name, c.Name(), ms)
			}
		}
	}
}

func TestKubeletReserved(t *testing.T) {
	for _, tc := range []struct {
		name              string
		role              node.Role
		total, used       uint64
		kube, sys, evict  uint64 // MiB
		logSize, logFiles int
	}{
		// kubelet 24 + containerd 24 + 4 × 16 protected.
		{"384 MiB worker", node.RoleWorker, 384 * mib, 100 * mib, 112, 132, 24, 3, 2},
		// Much in use at start: the pods keep a quarter all the same.
		{"384 MiB worker, full", node.RoleWorker, 384 * mib, 250 * mib, 112, 152, 24, 3, 2},
		{"1 GiB master", node.RoleMaster, 1 * gib, 200 * mib, 400, 264, 64, 8, 2},
		{"2 GiB master", node.RoleMaster, 2 * gib, 250 * mib, 784, 378, 100, 10, 5},
		{"16 GiB worker", node.RoleWorker, 16 * gib, 1 * gib, 480, 2048, 100, 10, 5},
	} {
		env := memEnv(t, tc.role, tc.total, tc.used)
		km, ok := kubeletReserved(env)
		got := fmt.Sprint(km.KubeReserved>>20, km.SystemReserved>>20, km.EvictionHard>>20, km.LogMaxSize>>20, km.LogMaxFiles)
		want := fmt.Sprint(tc.kube, tc.sys, tc.evict, tc.logSize, tc.logFiles)
		if !ok || got != want {
			t.Errorf("%s: kube, system, eviction, log size (MiB), log files: %s; want %s", tc.name, got, want)
		}
		if pods := tc.total - km.KubeReserved - km.SystemReserved - km.EvictionHard; pods < tc.total/4 {
			t.Errorf("%s: %d MiB left for the pods", tc.name, pods>>20)
		}
	}
}

func TestKubeletMemoryConfig(t *testing.T) {
	env := memEnv(t, node.RoleWorker, 384*mib, 100*mib)
	conf := kubeletConfiguration(env)
	for _, want := range []string{"kubeReserved:\n  memory: 112Mi\n", "systemReserved:\n  memory: 132Mi\n",
		"evictionHard:\n  memory.available: 24Mi\n", "mergeDefaultEvictionSettings: true\n",
		"containerLogMaxSize: 3Mi\n", "containerLogMaxFiles: 2\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("kubelet config lacks %q:\n%s", want, conf)
		}
	}
	var parsed map[string]any
	if err := yaml.Unmarshal([]byte(conf), &parsed); err != nil {
		t.Errorf("kubelet config: %v\n%s", err, conf)
	}
	env.Memory = NodeMemory{}
	if conf := kubeletConfiguration(env); strings.Contains(conf, "Reserved") || strings.Contains(conf, "eviction") {
		t.Errorf("kubelet memory settings with the node's memory unknown:\n%s", conf)
	}
}

func TestEtcdMemoryConfig(t *testing.T) {
	for _, tc := range []struct {
		total   uint64
		quota   int64
		maxWALs uint
	}{
		{0, 0, 0},
		{512 * mib, 128 << 20, 2},
		{1 * gib, 128 << 20, 2},
		{2 * gib, 256 << 20, 2},
		{4 * gib, 512 << 20, 0},
		{16 * gib, 2 << 30, 0},
		{64 * gib, 2 << 30, 0},
	} {
		env := memEnv(t, node.RoleMaster, tc.total, 0)
		if err := (Etcd{}).Prepare(env); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(env.Path(etcdConfigFile))
		if err != nil {
			t.Fatal(err)
		}
		var cfg etcdConfig
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.QuotaBackendBytes != tc.quota || cfg.MaxWALs != tc.maxWALs || cfg.SnapshotCount != 5000 {
			t.Errorf("%d MiB: quota %d, max-wals %d, snapshot-count %d; want %d, %d, 5000", tc.total>>20, cfg.QuotaBackendBytes, cfg.MaxWALs, cfg.SnapshotCount, tc.quota, tc.maxWALs)
		}
		if tc.total == 0 && (strings.Contains(string(b), "quota") || strings.Contains(string(b), "max-wals")) {
			t.Errorf("etcd config sized with the node's memory unknown:\n%s", b)
		}
	}
}
