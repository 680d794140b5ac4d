package vmcluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// StateFile is the file in a cluster's state directory that says how the
// host reaches its running VMs: the kiln cluster daemon writes it, and so
// do the tests that boot clusters, so that kiln's node commands (kiln
// status, logs, reboot... --node NAME --state DIR) find the nodes by name.
const StateFile = "state.json"

// State is StateFile.
type State struct {
	// PID is the process that runs the VMs (the daemon, a test): the
	// state holds while it lives.
	PID        int         `json:"pid"`
	APIPort    int         `json:"apiPort"`
	Kubeconfig string      `json:"kubeconfig"`
	VIP        string      `json:"vip,omitempty"`
	Egress     bool        `json:"egress,omitempty"`
	Nodes      []StateNode `json:"nodes"`
}

// StateNode is one VM.
type StateNode struct {
	Name, Role, Address, Console string
	PID                          int
	// NodeAPIPort is the host port forwarded to a master's node API.
	NodeAPIPort int `json:",omitempty"`
}

// State is c's state, run by this process.
func (c *Cluster) State() State {
	st := State{PID: os.Getpid(), APIPort: c.APIPort, Kubeconfig: c.Kubeconfig, VIP: c.VIP(), Egress: c.Egress()}
	for _, n := range c.Nodes {
		st.Nodes = append(st.Nodes, StateNode{Name: n.Name, Role: string(n.Role), Address: n.Address, Console: n.ConsoleLog, PID: n.VM().PID(), NodeAPIPort: n.NodeAPIPort})
	}
	return st
}

// WriteState writes c's state into dir and returns its path.
func (c *Cluster) WriteState(dir string) (string, error) {
	data, err := json.MarshalIndent(c.State(), "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, StateFile)
	return path, os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadState reads the state in dir.
func ReadState(dir string) (*State, error) {
	path := filepath.Join(dir, StateFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &st, nil
}
