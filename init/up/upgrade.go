package up

import (
	"archive/tar"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"kiln/configs/image"
	"kiln/configs/nodeapi"
	"kiln/init/slots"
)

// Upgrader is PID 1's side of kiln upgrade (init/boot.Upgrades): the image
// the node runs, writing an upgrade to the slot not booted and rebooting
// into it on trial, and hearing that the node is ready. nil when PID 1
// does not run the node (kiln-node up on a host).
type Upgrader interface {
	Image() *nodeapi.ImageStatus
	Install(u nodeapi.Upgrade, kernel, initrd io.Reader) (nodeapi.UpgradeAccepted, error)
	Ready()
}

// Limits of an upgrade's files: a kiln kernel is ~14 MB and an initramfs
// ~80 MB; a boot partition holds two of each.
const (
	maxUpgradeManifest = 64 << 10
	maxUpgradeFile     = 1 << 30
)

// upgradeTarget is what an upgrade is checked against: this node.
type upgradeTarget struct {
	role   string
	caHash string
}

// withUpgrade serves nodeapi.PathUpgrade (the admin group only, as
// authorize decides) and hands the rest to h.
func withUpgrade(target upgradeTarget, u Upgrader, h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("POST "+nodeapi.PathUpgrade, func(w http.ResponseWriter, r *http.Request) {
		if u == nil {
			http.Error(w, "this node is not run by kiln's PID 1 (kiln-node up on a host): there is no image to upgrade", http.StatusNotImplemented)
			return
		}
		tr := tar.NewReader(r.Body)
		up, code, err := readUpgradeManifest(tr, target)
		if err != nil {
			http.Error(w, err.Error(), code)
			return
		}
		kernel, err := tarEntry(tr, nodeapi.UpgradeKernelName, up.KernelSize)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// The initramfs follows the kernel: its header is read once the
		// kernel is.
		initrd := &lazyReader{open: func() (io.Reader, error) { return tarEntry(tr, nodeapi.UpgradeInitrdName, up.InitrdSize) }}
		acc, err := u.Install(up, kernel, initrd)
		switch {
		case errors.Is(err, slots.ErrNoSlots), errors.Is(err, slots.ErrOnTrial):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, "upgrade: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(acc)
	})
	return mux
}

// readUpgradeManifest reads the stream's first entry and checks it
// against this node: the answer's status code with the error.
func readUpgradeManifest(tr *tar.Reader, target upgradeTarget) (nodeapi.Upgrade, int, error) {
	var up nodeapi.Upgrade
	hdr, err := tr.Next()
	if err != nil {
		return up, http.StatusBadRequest, fmt.Errorf("upgrade: reading the stream: %v", err)
	}
	if hdr.Name != nodeapi.UpgradeManifestName || hdr.Size > maxUpgradeManifest {
		return up, http.StatusBadRequest, fmt.Errorf("upgrade: the stream starts with %q (%d bytes), not %s", hdr.Name, hdr.Size, nodeapi.UpgradeManifestName)
	}
	if err := json.NewDecoder(io.LimitReader(tr, maxUpgradeManifest)).Decode(&up); err != nil {
		return up, http.StatusBadRequest, fmt.Errorf("upgrade: %s: %v", nodeapi.UpgradeManifestName, err)
	}
	if err := checkUpgrade(up, target); err != nil {
		return up, http.StatusConflict, err
	}
	return up, 0, nil
}

// checkUpgrade refuses an image for another role or cluster, or one whose
// description is not whole, before anything is written.
func checkUpgrade(up nodeapi.Upgrade, target upgradeTarget) error {
	if up.Role != target.role {
		return fmt.Errorf("upgrade refused: the image is a %s image and this node is a %s", up.Role, target.role)
	}
	if up.ClusterCAHash != target.caHash {
		return fmt.Errorf("upgrade refused: the image belongs to another cluster (its CA %s, this node's %s)", up.ClusterCAHash, target.caHash)
	}
	if up.ImageID == "" || up.Release == "" {
		return errors.New("upgrade refused: the image has no ID or release")
	}
	for _, f := range []struct {
		name string
		size int64
		sum  string
	}{{"kernel", up.KernelSize, up.KernelSHA256}, {"initramfs", up.InitrdSize, up.InitrdSHA256}} {
		if f.size <= 0 || f.size > maxUpgradeFile {
			return fmt.Errorf("upgrade refused: the %s's size %d is out of range", f.name, f.size)
		}
		if b, err := hex.DecodeString(f.sum); err != nil || len(b) != 32 {
			return fmt.Errorf("upgrade refused: the %s's sha256 %q is not 64 hex digits", f.name, f.sum)
		}
	}
	return checkCmdline(up.Cmdline)
}

// checkCmdline refuses kernel arguments that would break the bootloaders'
// configs (white space, control characters, quotes) or that the node sets
// itself (how it boots, its state disk, its slot).
func checkCmdline(args []string) error {
	own := []string{image.ParamBoot, image.ParamStateDisk, image.ParamSlot, image.ParamTrial}
	for _, a := range args {
		if a == "" || strings.ContainsFunc(a, func(r rune) bool { return r <= ' ' || r == '"' || r == 0x7f }) {
			return fmt.Errorf("upgrade refused: kernel argument %q: empty, or white space, quotes or control characters in it", a)
		}
		key, _, _ := strings.Cut(a, "=")
		for _, o := range own {
			if key == o {
				return fmt.Errorf("upgrade refused: kernel argument %q: the node sets %s itself", a, o)
			}
		}
	}
	return nil
}

// tarEntry reads the next entry, which must be name, of size bytes.
func tarEntry(tr *tar.Reader, name string, size int64) (io.Reader, error) {
	hdr, err := tr.Next()
	if err != nil {
		return nil, fmt.Errorf("upgrade: reading %s: %v", name, err)
	}
	if hdr.Name != name || hdr.Size != size {
		return nil, fmt.Errorf("upgrade: entry %q of %d bytes where %s of %d was announced", hdr.Name, hdr.Size, name, size)
	}
	return tr, nil
}

// lazyReader opens its reader at the first Read.
type lazyReader struct {
	open func() (io.Reader, error)
	r    io.Reader
}

func (l *lazyReader) Read(p []byte) (int, error) {
	if l.r == nil {
		r, err := l.open()
		if err != nil {
			return 0, err
		}
		l.r = r
	}
	return l.r.Read(p)
}

// imageAnnotation adds the image the node runs to its status.
func imageAnnotation(u Upgrader) func(*nodeapi.Status) {
	if u == nil {
		return nil
	}
	return func(st *nodeapi.Status) { st.Image = u.Image() }
}

// annotations applies each non-nil annotation in turn; nil if none is.
func annotations(fs ...func(*nodeapi.Status)) func(*nodeapi.Status) {
	var set []func(*nodeapi.Status)
	for _, f := range fs {
		if f != nil {
			set = append(set, f)
		}
	}
	if len(set) == 0 {
		return nil
	}
	return func(st *nodeapi.Status) {
		for _, f := range set {
			f(st)
		}
	}
}
