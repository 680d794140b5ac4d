package nodeapi

import (
	"fmt"
	"regexp"

	"kiln/internal/bounded"
)

// The volume path of every node's node API: the masters' local-storage
// provisioner makes the directory of a PersistentVolume of the
// StorageClass "local" on the node its pod was scheduled to, and removes
// it, with the data, once the PersistentVolume is deleted.
const (
	// PathVolumes: PUT PathVolumes+NAME makes the node's volume
	// directory NAME (VolumesDir under its data directory), mode 0777 so
	// that a pod of any user can write to it; a directory that is there
	// already is made already (200; 201 when this request made it).
	// 409 Conflict: the node has no state disk (its data directory is
	// in RAM); the answer says so, for the claim's event.
	//
	// DELETE PathVolumes+NAME removes the node's volume directory NAME
	// and all it holds; a directory that is not there is removed already
	// (200).
	//
	// Both: 400 Bad Request: NAME is not a volume's name
	// (CheckVolumeName).
	PathVolumes = "/volumes/"
	// VolumesDir is where a node keeps the volumes' data, under its data
	// directory (on the state disk): DATA/volumes/NAME.
	VolumesDir = "volumes"
	// VolumeMode is the mode of a volume's directory: writable by every
	// user, since a pod may run as any user and the kubelet mounts a
	// hostPath as it is (a pod's fsGroup does not apply to it). Pods
	// reach it only through its PersistentVolume: a container sees the
	// node's files only by mounting them.
	VolumeMode = 0o777
	// VolumesGroup is the group of the client certificates that may PUT
	// and DELETE PathVolumes+NAME and use nothing else of the node API:
	// the masters' local-storage provisioner (kiln:local-storage).
	VolumesGroup = "kiln:local-storage"
)

// volumeName is a PersistentVolume's name as the provisioner makes it:
// "pvc-" and the claim's UID, which the API server makes a lowercase UUID.
var volumeName = regexp.MustCompile(`^pvc-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// CheckVolumeName accepts the names of the volumes the provisioner
// makes, and nothing else: no path separator, no "..", nothing that is
// not a volume directory.
func CheckVolumeName(name string) error {
	if !volumeName.MatchString(name) {
		return fmt.Errorf("%s is not a volume's name (want pvc-UID, the UID of the claim it was made for, such as pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6)", bounded.Quote(name))
	}
	return nil
}
