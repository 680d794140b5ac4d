package builder

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"kiln/configs/cluster"
	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/images/oci"
)

func TestRequestCheck(t *testing.T) {
	initBin, _ := fixtures(t)
	dir := t.TempDir()
	notELF := filepath.Join(dir, "script.sh")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	workerCfg := filepath.Join(dir, "worker.yaml")
	os.WriteFile(workerCfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: worker\n"), 0o644)
	badCfg := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badCfg, []byte("apiVersion: kiln.dev/v1alpha1\nkind: NodeConfig\nrole: worker\nbogus: 1\n"), 0o644)

	for _, tc := range []struct {
		name string
		req  Request
		want string // "" = valid
	}{
		{"ok", Request{Role: "master", NodeBinary: initBin}, ""},
		{"ok worker config", Request{Role: "worker", NodeBinary: initBin, ConfigFile: workerCfg, Formats: []string{"iso", "pxe"}}, ""},
		{"no role", Request{NodeBinary: initBin}, "no role given"},
		{"bad role", Request{Role: "boss", NodeBinary: initBin}, `role "boss" is not a role (want master or worker)`},
		{"no binary", Request{Role: "master", NodeBinary: filepath.Join(dir, "nope")}, "node binary " + filepath.Join(dir, "nope") + " does not exist"},
		{"binary not ELF", Request{Role: "master", NodeBinary: notELF}, "is not an ELF executable"},
		{"binary is dir", Request{Role: "master", NodeBinary: dir}, "is not a regular file"},
		{"missing config", Request{Role: "master", NodeBinary: initBin, ConfigFile: filepath.Join(dir, "none.yaml")}, "config " + filepath.Join(dir, "none.yaml")},
		{"config role mismatch", Request{Role: "master", NodeBinary: initBin, ConfigFile: workerCfg}, "role is worker, but the image is for a master"},
		{"config unknown field", Request{Role: "worker", NodeBinary: initBin, ConfigFile: badCfg}, `unknown field "bogus"`},
		{"bad format", Request{Role: "master", NodeBinary: initBin, Formats: []string{"iso", "vmdk"}}, `unknown format "vmdk" (want one or more of kernel, iso, qcow2, pxe)`},
		{"bad kernel", Request{Role: "master", NodeBinary: initBin, Kernel: "rt"}, `unknown flavour "rt"`},
		{"worker token", Request{Role: "worker", NodeBinary: initBin, BootstrapToken: "abcdef.0123456789abcdef"}, ""},
		{"bad token", Request{Role: "worker", NodeBinary: initBin, BootstrapToken: "abcdef"}, `bootstrap token: want "<id>.<secret>"`},
		{"master token", Request{Role: "master", NodeBinary: initBin, BootstrapToken: "abcdef.0123456789abcdef"}, "a bootstrap token is for worker images"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Check()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("no error, want %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) {
	initBin, clusterDir := fixtures(t)
	ctx := context.Background()
	// A master needs the CA keys: a directory with only a worker's files
	// is refused before anything is built.
	workerOnly := filepath.Join(t.TempDir(), "workeronly")
	for _, rel := range []string{cluster.ConfigFile, cluster.CACertFile, cluster.BootstrapTokenFile} {
		data, err := os.ReadFile(filepath.Join(clusterDir, rel))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(workerOnly, rel)), 0o700)
		os.WriteFile(filepath.Join(workerOnly, rel), data, 0o600)
	}
	out := filepath.Join(t.TempDir(), "out")
	_, err := Build(ctx, Request{Role: "master", NodeBinary: initBin, ClusterDir: workerOnly, OutDir: out})
	if err == nil || !strings.Contains(err.Error(), "pki/ca.key") {
		t.Errorf("master from a worker's cluster files: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("%s created by a failed build", out)
	}
	_, err = Build(ctx, Request{Role: "worker", NodeBinary: initBin, ClusterDir: filepath.Join(t.TempDir(), "none"), OutDir: out})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing cluster: %v", err)
	}
	// ... while a worker builds from it.
	if testing.Short() {
		return
	}
	needKernel(t)
	if _, err := Build(ctx, Request{Role: "worker", NodeBinary: initBin, ClusterDir: workerOnly, OutDir: out, Formats: []string{"kernel"}}); err != nil {
		t.Errorf("worker from a worker's cluster files: %v", err)
	}
}

func TestInitramfsReproducible(t *testing.T) {
	ctx := context.Background()
	var imgs [][]byte
	var manifests [][]byte
	for i := 0; i < 2; i++ {
		req := testRequest(t, "worker", "kernel")
		req.RootCacheDir = t.TempDir() // mksquashfs both times
		start := time.Now()
		res, err := Build(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("build %d: %v, initramfs %d bytes raw, %d zstd, %d entries, id %s", i, time.Since(start).Round(time.Millisecond),
			res.InitramfsRaw, res.InitramfsSize, res.Entries, res.ID)
		data, err := os.ReadFile(res.Initramfs)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, data)
		m, err := os.ReadFile(filepath.Join(req.OutDir, image.ManifestFile))
		if err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, m)
		if i == 0 {
			// Different mtimes of the inputs must not matter.
			future := time.Now().Add(time.Hour)
			os.Chtimes(req.NodeBinary, future, future)
		}
	}
	if !bytes.Equal(imgs[0], imgs[1]) {
		t.Error("two builds from the same inputs gave different initramfs bytes")
	}
	// The manifests differ only in nothing: same ID, no time stamps.
	if !bytes.Equal(manifests[0], manifests[1]) {
		t.Errorf("manifests differ:\n%s\n%s", manifests[0], manifests[1])
	}
}

// A second build of the same contents, even for another cluster, takes the
// root image from the cache; the node's own files differ.
func TestRootImageCache(t *testing.T) {
	ctx := context.Background()
	cache := t.TempDir()
	var roots []string
	for i, token := range []string{"", "batch2.0123456789abcdef"} {
		req := testRequest(t, "worker", "kernel")
		req.RootCacheDir, req.BootstrapToken = cache, token
		var log strings.Builder
		req.Progress = &log
		res, err := Build(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if cached := strings.Contains(log.String(), "from the cache"); cached != (i == 1) {
			t.Errorf("build %d: cached %v:\n%s", i, cached, log.String())
		}
		outer, _ := readInitramfs(t, res.Initramfs)
		roots = append(roots, string(outer[strings.TrimPrefix(image.RootImageFile, "/")].data))
		tok := outer[strings.TrimPrefix(image.EtcDir, "/")+"/kiln/cluster/"+cluster.BootstrapTokenFile]
		if token != "" && string(tok.data) != token+"\n" {
			t.Errorf("build %d: the initramfs' token is %q", i, tok.data)
		}
	}
	if roots[0] != roots[1] {
		t.Error("the two builds' root images differ")
	}
	// A damaged cache entry is made again, not handed to the nodes.
	imgs, _ := filepath.Glob(filepath.Join(cache, "*.squashfs"))
	if len(imgs) != 1 {
		t.Fatalf("cache holds %v", imgs)
	}
	data, _ := os.ReadFile(imgs[0])
	data[len(data)/2] ^= 0xff
	os.WriteFile(imgs[0], data, 0o644)
	req := testRequest(t, "worker", "kernel")
	req.RootCacheDir = cache
	var log strings.Builder
	req.Progress = &log
	res, err := Build(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(log.String(), "from the cache") {
		t.Errorf("a damaged cache entry was used:\n%s", log.String())
	}
	outer, _ := readInitramfs(t, res.Initramfs)
	if string(outer[strings.TrimPrefix(image.RootImageFile, "/")].data) != roots[0] {
		t.Error("the root image made again differs from the first")
	}
}

func TestImageContents(t *testing.T) {
	ctx := context.Background()
	_, clusterDir := fixtures(t)
	secrets := map[string][]byte{}
	for _, rel := range []string{cluster.CAKeyFile, cluster.EtcdCAKeyFile, cluster.FrontProxyCAKeyFile,
		cluster.ServiceAccountKeyFile, cluster.EncryptionKeyFile, cluster.AdminKubeconfigFile} {
		data, err := os.ReadFile(filepath.Join(clusterDir, rel))
		if err != nil {
			t.Fatal(err)
		}
		secrets[rel] = data
	}

	for _, role := range []string{"master", "worker"} {
		t.Run(role, func(t *testing.T) {
			req := testRequest(t, role, "kernel", "pxe")
			if role == "worker" {
				req.BootstrapToken = "batch1.0123456789abcdef" // kiln build --token
			}
			res, err := Build(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			// On the build host: a master's initramfs is its owner's alone.
			for _, p := range []string{res.Initramfs, filepath.Join(req.OutDir, "pxe", "initramfs.img")} {
				if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != FileMode(node.Role(role)) {
					t.Errorf("%s: %v, want mode %04o", p, err, FileMode(node.Role(role)))
				}
			}
			outer, outerRaw := readInitramfs(t, res.Initramfs)
			entries, rootFiles := readRoot(t, outer)
			raw := append(outerRaw, rootFiles...)
			t.Logf("%s: initramfs %d entries, %d bytes; root image %d entries, %d bytes of files; %d modules; tools %v",
				role, len(outer), len(outerRaw), len(entries), len(rootFiles), len(res.Modules), res.Tools)

			// The initramfs: stage 1, its modules, the root image and its
			// checksum, and nothing else.
			getOuter := func(p string) cpioEntry {
				t.Helper()
				e, ok := outer[p]
				if !ok {
					t.Fatalf("%s missing from the initramfs", p)
				}
				return e
			}
			stage1, _ := os.ReadFile(filepath.Join(filepath.Dir(req.NodeBinary), "kiln-init"))
			if e := getOuter("init"); e.mode != 0o100755 || !bytes.Equal(e.data, stage1) {
				t.Errorf("the initramfs' /init (mode %o) is not kiln-init", e.mode)
			}
			if e := getOuter("dev/console"); e.mode != 0o020600 || e.major != 5 || e.minor != 1 {
				t.Errorf("/dev/console: mode %o, %d:%d", e.mode, e.major, e.minor)
			}
			rootData := getOuter(strings.TrimPrefix(image.RootImageFile, "/")).data
			wantSum := fmt.Sprintf("%08x %d\n", crc32.ChecksumIEEE(rootData), len(rootData))
			if got := string(getOuter(strings.TrimPrefix(image.RootImageSumFile, "/")).data); got != wantSum {
				t.Errorf("%s is %q, not the root image's CRC-32 and size %q", image.RootImageSumFile, got, wantSum)
			}
			early := strings.Fields(string(getOuter(strings.TrimPrefix(image.EarlyModulesFile, "/")).data))
			if !slices.Equal(early, res.EarlyModules) || !slices.Contains(early, "squashfs") {
				t.Errorf("stage 1 modules %v, result %v", early, res.EarlyModules)
			}
			for n, e := range outer {
				if e.mode&0o170000 == 0o100000 && !strings.HasPrefix(n, "lib/modules/") && !strings.HasPrefix(n, "kiln/") &&
					n != "init" && n != image.CompleteMarker {
					t.Errorf("the initramfs holds %s: it belongs in the root image", n)
				}
			}

			get := func(p string) cpioEntry {
				t.Helper()
				e, ok := entries[p]
				if !ok {
					t.Fatalf("%s missing from the root image", p)
				}
				return e
			}
			if _, err := os.Stat("/" + CABundle); err == nil {
				if e := get(CABundle); e.mode != 0o100644 {
					t.Errorf("%s mode %o, want 0644", CABundle, e.mode)
				}
			}
			if e := get("init"); e.mode != 0o100755 {
				t.Errorf("/init mode %o", e.mode)
			}
			initData, _ := os.ReadFile(req.NodeBinary)
			if !bytes.Equal(get("init").data, initData) {
				t.Error("the root image's /init is not the node binary")
			}
			for _, d := range []string{"run", "var", "root", "etc", "dev", "proc", "sys", "tmp"} {
				if e := get(d); e.mode&0o170000 != 0o040000 {
					t.Errorf("/%s (a mount point) is not a directory: %o", d, e.mode)
				}
			}
			if e := get("etc/os-release"); !strings.Contains(string(e.data), `NAME="kiln"`) || !strings.Contains(string(e.data), "VARIANT_ID="+role) {
				t.Errorf("os-release:\n%s", e.data)
			}
			cfg, err := node.Parse(get("etc/kiln/config.yaml").data)
			if err != nil || string(cfg.Role) != role {
				t.Errorf("config.yaml: role %q, %v", cfg.Role, err)
			}
			if e := get("tmp"); e.mode != 0o041777 {
				t.Errorf("/tmp mode %o", e.mode)
			}

			// Modules: every listed one has its file; the list starts
			// with what it depends on.
			modDir := "lib/modules/" + res.Kernel.Release + "/"
			files := map[string]bool{}
			for n := range entries {
				if strings.HasPrefix(n, modDir+"kernel/") && strings.HasSuffix(n, ".ko") {
					files[strings.TrimSuffix(path.Base(n), ".ko")] = true
				}
			}
			listed := strings.Fields(string(get("etc/kiln/modules").data))
			if len(listed) != len(files) {
				t.Errorf("%d modules listed, %d .ko files", len(listed), len(files))
			}
			pos := map[string]int{}
			for i, m := range listed {
				pos[m] = i
				if !files[m] && !files[strings.ReplaceAll(m, "_", "-")] {
					t.Errorf("module %s listed but not in the image", m)
				}
			}
			for _, m := range []string{"virtio_net", "virtio_blk", "overlay", "br_netfilter", "vxlan", "bridge", "veth", "nf_conntrack", "isofs", "vfat", "button"} {
				if _, ok := pos[m]; !ok {
					t.Errorf("module %s not in /etc/kiln/modules", m)
				}
			}
			for _, dep := range [][2]string{{"virtio_ring", "virtio_net"}, {"bridge", "br_netfilter"}, {"nf_conntrack", "nf_nat"}, {"fat", "vfat"}} {
				if pos[dep[0]] >= pos[dep[1]] {
					t.Errorf("module %s listed after %s, which needs it", dep[0], dep[1])
				}
			}
			for _, idx := range []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.builtin"} {
				get(modDir + idx)
			}

			// Tools with their loader and libraries.
			get("usr/sbin/mke2fs")
			get("lib64/ld-linux-x86-64.so.2")
			if !strings.Contains(string(get("etc/kiln/tools").data), "/usr/sbin/mke2fs\n") {
				t.Error("/etc/kiln/tools lacks mke2fs")
			}

			// Cluster material.
			var clusterFiles []string
			for n, e := range entries {
				if strings.HasPrefix(n, "etc/kiln/cluster/") && e.mode&0o170000 == 0o100000 {
					clusterFiles = append(clusterFiles, strings.TrimPrefix(n, "etc/kiln/cluster/"))
					host, _ := os.ReadFile(filepath.Join(clusterDir, strings.TrimPrefix(n, "etc/kiln/cluster/")))
					if n == "etc/kiln/cluster/"+cluster.BootstrapTokenFile && req.BootstrapToken != "" {
						host = []byte(req.BootstrapToken + "\n") // checked below
					}
					if !bytes.Equal(host, e.data) {
						t.Errorf("%s differs from the cluster directory's", n)
					}
					if strings.HasSuffix(n, ".key") || strings.Contains(n, "secrets/") || strings.HasSuffix(n, ".kubeconfig") {
						if e.mode&0o077 != 0 {
							t.Errorf("%s mode %o: readable by others", n, e.mode)
						}
					}
				}
			}
			want := len(clusterFilesFor(node.Role(role)))
			if len(clusterFiles) != want {
				t.Errorf("%d cluster files %v, want %d", len(clusterFiles), clusterFiles, want)
			}
			for rel, secret := range secrets {
				_, inImage := entries["etc/kiln/cluster/"+rel]
				if role == "master" && !inImage {
					t.Errorf("master image lacks %s", rel)
				}
				if role == "worker" {
					if inImage {
						t.Errorf("worker image has %s", rel)
					}
					// Not under another name either.
					if bytes.Contains(raw, bytes.TrimSpace(secret)) {
						t.Errorf("worker initramfs contains the bytes of %s", rel)
					}
				}
			}
			if role == "worker" {
				for _, e := range entries {
					if bytes.Contains(e.data, []byte("PRIVATE KEY")) {
						t.Errorf("worker initramfs: %s holds a private key", e.name)
					}
				}
				for _, rel := range []string{cluster.ConfigFile, cluster.BootstrapTokenFile} {
					get("etc/kiln/cluster/" + rel)
				}
				if tok := get("etc/kiln/cluster/" + cluster.BootstrapTokenFile); string(tok.data) != req.BootstrapToken+"\n" || tok.mode != 0o100600 {
					t.Errorf("worker token %q mode %o, want the one given (%s), 0600", tok.data, tok.mode, req.BootstrapToken)
				}
				// Only the CA's hash (in cluster.yaml): the worker learns
				// the certificate from the master at join.
				if _, ok := entries["etc/kiln/cluster/"+cluster.CACertFile]; ok {
					t.Errorf("worker image has %s", cluster.CACertFile)
				}
			}
			// Both roles run pods by default: the worker stack is there.
			for _, p := range podPrograms {
				get(p.Path[1:])
			}
			for _, im := range oci.Builtin() {
				get("usr/share/kiln/images/" + im.Archive)
			}
			if role == "worker" {
			}
		})
	}
}

func clusterFilesFor(r node.Role) []clusterFile { return clusterFiles(r) }

func TestMBR(t *testing.T) {
	l, err := planDisk(8<<30, 60<<20)
	if err != nil {
		t.Fatal(err)
	}
	if l.bootOffset != 1<<20 || l.bootSize != 136<<20 || l.stateOffset != 137<<20 || l.stateOffset+l.stateLen != 8<<30 {
		t.Errorf("layout %+v", l)
	}
	if _, err := planDisk(200<<20, 60<<20); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("tiny disk: %v", err)
	}
	code := bytes.Repeat([]byte{0xcc}, 440)
	b, err := makeMBR(code, 0x12345678, []mbrPartition{
		{active: true, typ: 0x0c, start: l.bootOffset, size: l.bootSize},
		{typ: 0x83, start: l.stateOffset, size: l.stateLen},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 512 || b[510] != 0x55 || b[511] != 0xaa || !bytes.Equal(b[:440], code) {
		t.Fatal("bad MBR framing")
	}
	if binary.LittleEndian.Uint32(b[440:]) != 0x12345678 {
		t.Error("disk signature")
	}
	p1, p2 := b[446:462], b[462:478]
	if p1[0] != 0x80 || p1[4] != 0x0c || binary.LittleEndian.Uint32(p1[8:]) != 2048 || binary.LittleEndian.Uint32(p1[12:]) != 136*2048 {
		t.Errorf("partition 1: % x", p1)
	}
	if p2[0] != 0 || p2[4] != 0x83 || binary.LittleEndian.Uint32(p2[8:]) != 137*2048 {
		t.Errorf("partition 2: % x", p2)
	}
	// LBA 2048 = C0 H32 S33 with 255/63 geometry.
	if !bytes.Equal(p1[1:4], []byte{32, 33, 0}) {
		t.Errorf("CHS of LBA 2048: % x", p1[1:4])
	}
	if !bytes.Equal(chs(1<<30), []byte{0xfe, 0xff, 0xff}) {
		t.Error("CHS beyond 8 GiB")
	}
	if _, err := makeMBR(nil, 0, []mbrPartition{{start: 1}}); err == nil {
		t.Error("unaligned partition accepted")
	}
}

func TestFormatsRegistry(t *testing.T) {
	seen := map[string]bool{}
	for _, f := range registry {
		if f.Name == "" || f.Build == nil || f.Help == "" || seen[f.Name] {
			t.Errorf("bad registry entry %+v", f)
		}
		seen[f.Name] = true
	}
	fs, err := lookupFormats([]string{"pxe", "kernel", "pxe"})
	if err != nil || len(fs) != 2 || fs[0].Name != "kernel" || fs[1].Name != "pxe" {
		t.Errorf("lookupFormats: %v %v", fs, err)
	}
	if _, err := lookupFormats([]string{" ", ""}); err == nil {
		t.Error("empty format list accepted")
	}
	var lastConsole string
	for _, a := range DefaultCmdline() {
		if strings.HasPrefix(a, "console=") {
			lastConsole = a
		}
	}
	if got := DefaultCmdline(); lastConsole != "console=ttyS0,115200" || !slices.Contains(got, "apparmor=0") {
		t.Errorf("cmdline %q: ttyS0 must be the last console, and AppArmor off", got)
	}
}

func TestSoftdepsAndAliases(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.softdep"), []byte(`# comment
softdep libcrc32c pre: crc32c
softdep cifs gcm
softdep vfio post: vfio_iommu_type1 pre: a-b
`), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.alias"), []byte(`alias crc32c crc32c_intel
alias crc32c crc32c-generic
alias pci:v00008086d* e1000e
`), 0o644)
	sd, err := readSoftdeps(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := sd["libcrc32c"]; len(got.pre) != 1 || got.pre[0] != "crc32c" || len(got.post) != 0 {
		t.Errorf("libcrc32c: %+v", got)
	}
	if got := sd["cifs"]; len(got.pre)+len(got.post) != 0 {
		t.Errorf("cifs (no section): %+v", got)
	}
	if got := sd["vfio"]; len(got.post) != 1 || len(got.pre) != 1 || got.pre[0] != "a-b" {
		t.Errorf("vfio: %+v", got)
	}
	al, err := readAliases(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := al["crc32c"]; len(got) != 2 || got[0] != "crc32c_intel" || got[1] != "crc32c_generic" {
		t.Errorf("crc32c aliases %v", got)
	}
	if len(al) != 1 {
		t.Errorf("wildcard aliases kept: %v", al)
	}
}

// TestFileModes checks the modes of the files that hold an initramfs
// without building one: the PXE copies (buildPXE), and the ISO's and the
// qcow2's final step (placeFile), whose tools write under the umask.
func TestFileModes(t *testing.T) {
	if FileMode(node.RoleMaster) != 0o600 || FileMode(node.RoleWorker) != 0o644 {
		t.Fatalf("modes: master %04o, worker %04o", FileMode(node.RoleMaster), FileMode(node.RoleWorker))
	}
	mode := func(p string) os.FileMode {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	for _, role := range []node.Role{node.RoleMaster, node.RoleWorker} {
		t.Run(string(role), func(t *testing.T) {
			out := t.TempDir()
			img := &Image{Role: role, ID: "0123456789abcdef", OutDir: out, Vmlinuz: filepath.Join(out, "vmlinuz"),
				Initramfs: filepath.Join(out, "initramfs.img"), Cmdline: DefaultCmdline(), TmpDir: t.TempDir()}
			os.WriteFile(img.Vmlinuz, []byte("kernel"), 0o644)
			os.WriteFile(img.Initramfs, []byte("initramfs"), 0o644) // as an older build left it
			// An older pxe/ with a readable copy is replaced.
			os.MkdirAll(filepath.Join(out, "pxe"), 0o755)
			os.WriteFile(filepath.Join(out, "pxe", "initramfs.img"), []byte("old"), 0o644)
			if _, err := buildPXE(context.Background(), img); err != nil {
				t.Fatal(err)
			}
			want := FileMode(role)
			if m := mode(filepath.Join(out, "pxe", "initramfs.img")); m != want {
				t.Errorf("pxe/initramfs.img: %04o, want %04o", m, want)
			}
			if m := mode(filepath.Join(out, "pxe", "vmlinuz")); m != 0o644 {
				t.Errorf("pxe/vmlinuz: %04o, want 0644", m)
			}
			// ISO and qcow2: what xorriso and qemu-img wrote is chmodded
			// before it takes its place.
			for _, name := range []string{string(role) + ".iso", string(role) + ".qcow2"} {
				tmp := filepath.Join(img.TmpDir, name)
				if err := os.WriteFile(tmp, []byte("image"), 0o666); err != nil {
					t.Fatal(err)
				}
				final := filepath.Join(out, name)
				os.WriteFile(final, []byte("older"), 0o644)
				if err := placeFile(tmp, final, role); err != nil {
					t.Fatal(err)
				}
				if m := mode(final); m != want {
					t.Errorf("%s: %04o, want %04o", name, m, want)
				}
			}
		})
	}
	if note := secretsNote(node.RoleWorker); !strings.Contains(note, "no key of the cluster") || !strings.Contains(note, "bootstrap token") {
		t.Errorf("worker note %q", note)
	}
	if note := secretsNote(node.RoleMaster); !strings.Contains(note, "every key of the cluster") || !strings.Contains(note, "0600") {
		t.Errorf("master note %q", note)
	}
}
