package up

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"

	"kiln/components"
	"kiln/configs/nodeapi"
)

// volumeHost is what the volume paths of the node API need of the node.
type volumeHost struct {
	// node is the node's name, for the answers.
	node string
	// dir is where the node keeps its volumes (components.VolumesDir).
	dir string
	// stateDisk: the node's data directory is on a state disk. Without
	// one (storage.stateDisk unset) it is a tmpfs (init/boot mounts one
	// on /var/lib), which a power-off empties.
	stateDisk bool
}

// volumeHostOf is env's node. Its node config is what says whether it
// has a state disk: init/boot mounts one on /var/lib when
// storage.stateDisk is set, and boots no further when it cannot, so a
// node that runs has one exactly when it is set (the kubelet's label
// components.StateDiskLabel says the same, but a label can outlive a
// change of config; this is the node's own word).
func volumeHostOf(env *components.Env) volumeHost {
	return volumeHost{node: env.NodeName, dir: components.VolumesDir(env), stateDisk: env.Config.Storage.StateDisk != ""}
}

// withVolumes adds the volume paths of the node API, on every node: the
// masters' local-storage provisioner (components/localstorage) makes a
// new volume's directory with PUT /volumes/NAME before it makes its
// PersistentVolume, and removes a deleted volume's data with DELETE
// /volumes/NAME. authorize lets these paths, and only they, be used by
// the provisioner's group.
func withVolumes(v volumeHost, h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("PUT "+nodeapi.PathVolumes+"{name}", func(w http.ResponseWriter, r *http.Request) {
		makeVolume(w, v, r.PathValue("name"))
	})
	mux.HandleFunc("DELETE "+nodeapi.PathVolumes+"{name}", func(w http.ResponseWriter, r *http.Request) {
		removeVolume(w, v.dir, r.PathValue("name"))
	})
	return mux
}

// makeVolume makes the directory dir/name, mode nodeapi.VolumeMode
// whatever the umask, so that the pods of any user can write to it: the
// kubelet uses a hostPath directory that is there as it is (it makes a
// missing one of DirectoryOrCreate root's, 0755, which only pods that
// run as root could write to). A directory that is there is made
// already, its mode left as it is (the provisioner asks again after an
// answer it did not get); anything else there is an error. A node
// without a state disk refuses (409 Conflict), with an answer the
// provisioner puts in the claim's event: the volume would be in RAM.
func makeVolume(w http.ResponseWriter, v volumeHost, name string) {
	if err := nodeapi.CheckVolumeName(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !v.stateDisk {
		http.Error(w, fmt.Sprintf("node %s has no state disk: its volumes would live in RAM and vanish at power-off (it has no storage.stateDisk in its node config); run the pod on a node that has one (nodeSelector %s: \"true\")",
			v.node, components.StateDiskLabel), http.StatusConflict)
		return
	}
	path := filepath.Join(v.dir, name)
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		http.Error(w, fmt.Sprintf("volume %s: %v", name, err), http.StatusInternalServerError)
		return
	}
	err := os.Mkdir(path, nodeapi.VolumeMode)
	if errors.Is(err, fs.ErrExist) {
		// Lstat: a symbolic link is not the volume, wherever it points.
		fi, err := os.Lstat(path)
		switch {
		case err != nil:
			http.Error(w, fmt.Sprintf("volume %s: %v", name, err), http.StatusInternalServerError)
		case !fi.IsDir():
			http.Error(w, fmt.Sprintf("volume %s: %s is there and is not a directory (%s): not using it; remove it by hand", name, path, fi.Mode().Type()), http.StatusInternalServerError)
		default:
			fmt.Fprintf(w, "volume %s: %s is there (made already)\n", name, path)
		}
		return
	}
	if err != nil {
		http.Error(w, fmt.Sprintf("volume %s: %v", name, err), http.StatusInternalServerError)
		return
	}
	// Mkdir's mode goes through the umask.
	if err := os.Chmod(path, nodeapi.VolumeMode); err != nil {
		os.Remove(path) // so that the provisioner's next request makes it again
		http.Error(w, fmt.Sprintf("volume %s: %v", name, err), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "volume %s: made %s (mode %#o)\n", name, path, nodeapi.VolumeMode)
}

// removeVolume removes dir/name and all it holds. A volume that is not
// there is removed already: the provisioner may ask again after an
// answer it did not get, and the directory may be gone with a state disk
// that was wiped.
func removeVolume(w http.ResponseWriter, dir, name string) {
	if err := nodeapi.CheckVolumeName(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	path := filepath.Join(dir, name)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(w, "volume %s: %s is not there (removed already)\n", name, path)
		return
	}
	if err := os.RemoveAll(path); err != nil {
		http.Error(w, fmt.Sprintf("volume %s: removing %s: %v", name, path, err), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "volume %s: removed %s\n", name, path)
}
