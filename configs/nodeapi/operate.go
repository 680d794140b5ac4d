package nodeapi

// The operator's paths of the node API (kiln logs, dmesg, reboot,
// shutdown, reset --node), for the admin group only.
const (
	// PathLogs+NAME takes two query parameters: LogsTail=N, the last N
	// lines only; LogsFollow=1, then the lines written after them, as
	// they come, until the client goes away.
	LogsTail   = "tail"
	LogsFollow = "follow"

	// PathDmesg: GET, the kernel's message buffer as text, one record a
	// line: "[SECONDS.MICROS] message".
	PathDmesg = "/dmesg"
	// PathReboot and PathShutdown: POST; 202 Accepted, then PID 1 stops
	// the components, unmounts and reboots or powers off, as for the
	// ACPI power button. 501 on a node PID 1 does not run (kiln-node up
	// on a host).
	PathReboot   = "/reboot"
	PathShutdown = "/shutdown"
	// PathReset: POST, the body the node's name (the confirmation): the
	// node marks its state disk to be formatted at the next boot, before
	// anything mounts it, and reboots: every pod's data, etcd's, the
	// node's certificates are gone, as on a new machine. 400 without
	// the right name; 409 on a diskless node (its reboot forgets all
	// anyway: use reboot).
	PathReset = "/reset"
	// ResetMarker is the file under the data directory (on the state
	// disk) that asks the next boot to format the disk.
	ResetMarker = ".kiln-reset"

	// PathRelay+NAME/ADDR/PATH: a master sends PATH (and the query) on to
	// the node API of node NAME at ADDR (an IP address, port Port) with
	// its own admin-group certificate, checking that the node's serving
	// certificate is the cluster CA's for NAME, and streams the answer
	// back: kiln reaches a node it has no route to (a kiln cluster's
	// worker) through a master it reaches (the master's forward). Only
	// the admin group may use it; a relay does not relay again.
	PathRelay = "/relay/"
)
