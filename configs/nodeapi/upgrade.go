package nodeapi

import (
	"fmt"
	"io"
	"time"
)

// PathUpgrade: POST, admin group only. The body is a tar stream of three
// files, in this order: UpgradeManifestName (an Upgrade as JSON), then
// the kernel and the initramfs (UpgradeKernelName, UpgradeInitrdName).
// The node checks the manifest before it reads on (role, cluster,
// sizes: 409 or 400 with why, nothing written), writes the two files to
// its boot partition's slot not booted, checks their sha256, and answers
// 202 with an UpgradeAccepted; then it stops its components and boots
// the new slot on trial (kexec, else the firmware). 409 on a node not
// booted from a disk with slots (ISO, PXE, -kernel): serve or boot the
// new image instead.
const PathUpgrade = "/upgrade"

// Names of the entries of PathUpgrade's tar stream.
const (
	UpgradeManifestName = "upgrade.json"
	UpgradeKernelName   = "vmlinuz"
	UpgradeInitrdName   = "initrd.img"
)

// Upgrade describes the image an upgrade brings (from the image's
// manifest, image.json, and the files' hashes as kiln read them).
type Upgrade struct {
	ImageID string `json:"imageID"`
	Role    string `json:"role"`
	Release string `json:"release"`
	// ClusterCAHash is the cluster CA's hash of the image's cluster
	// (sha256:...); the node refuses another cluster's.
	ClusterCAHash string `json:"clusterCAHash"`
	// Cmdline is the image's own kernel arguments (its manifest's); the
	// node adds how it boots, its state disk and its slot.
	Cmdline []string `json:"cmdline"`
	// The files' sizes and sha256 (hex).
	KernelSize   int64  `json:"kernelSize"`
	KernelSHA256 string `json:"kernelSHA256"`
	InitrdSize   int64  `json:"initrdSize"`
	InitrdSHA256 string `json:"initrdSHA256"`
	// TrialTimeout is how long the new image has to bring the node to
	// ready before the node goes back to the slot it left (0: the node's
	// default, DefaultTrialTimeout).
	TrialTimeout time.Duration `json:"trialTimeout,omitempty"`
}

// DefaultTrialTimeout is how long an image on trial has to bring its node
// to ready: generous, since a master under emulation takes minutes.
const DefaultTrialTimeout = 15 * time.Minute

// UpgradeAccepted is PathUpgrade's 202 answer.
type UpgradeAccepted struct {
	Slot    string `json:"slot"`    // the slot written and booted on trial
	Message string `json:"message"` // for the person at kiln upgrade
}

// ImageStatus is what a node says of the image it runs (Status.Image).
type ImageStatus struct {
	Role string `json:"role"`
	// Release is os-release's VERSION_ID (kiln build --release).
	Release string `json:"release"`
	// Boot is how the node booted (kiln.boot=).
	Boot string `json:"boot,omitempty"`
	// Slot is the slot it booted from, on a disk with slots; Default the
	// slot the bootloaders boot; Trial is true while the running slot is
	// on trial (not the default yet).
	Slot    string `json:"slot,omitempty"`
	Default string `json:"default,omitempty"`
	Trial   bool   `json:"trial,omitempty"`
	// Slots are the images each slot holds, as the upgrades recorded
	// them.
	Slots map[string]SlotImage `json:"slots,omitempty"`
	// LastUpgrade is the last upgrade's trial and how it ended.
	LastUpgrade *TrialResult `json:"lastUpgrade,omitempty"`
}

// SlotImage is what a slot holds.
type SlotImage struct {
	ImageID string `json:"imageID,omitempty"`
	Release string `json:"release,omitempty"`
}

// Trial outcomes.
const (
	TrialRunning    = "running"     // booted on trial, not ready yet
	TrialGood       = "good"        // ready on it: the slot is the default now
	TrialRolledBack = "rolled-back" // the node came back to the slot it left
)

// TrialResult is an upgrade's trial.
type TrialResult struct {
	Slot    string    `json:"slot"`
	ImageID string    `json:"imageID,omitempty"`
	Release string    `json:"release,omitempty"`
	Result  string    `json:"result"`           // a Trial* value
	Reason  string    `json:"reason,omitempty"` // why it was rolled back
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// Deadline is when the trial gives up.
	Deadline time.Time `json:"deadline"`
}

// writeImage is the status table's image lines.
func writeImage(w io.Writer, im *ImageStatus) {
	line := fmt.Sprintf("image: %s %s, booted %s", im.Role, im.Release, im.Boot)
	if im.Slot != "" {
		line += fmt.Sprintf(" from slot %s (default %s)", im.Slot, im.Default)
		if im.Trial {
			line += ", on trial"
		}
	}
	fmt.Fprintln(w, line)
	if t := im.LastUpgrade; t != nil {
		line := fmt.Sprintf("last upgrade: release %s to slot %s, %s", t.Release, t.Slot, t.Result)
		if t.Reason != "" {
			line += ": " + t.Reason
		}
		fmt.Fprintln(w, line)
	}
}
