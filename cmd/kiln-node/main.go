// kiln-node is the node binary: PID 1 of a kiln image and every Kubernetes
// component, in one multi-call program. `kiln-node component NAME ARGS...`
// runs one component's upstream code; the supervisor starts each component
// that way, as its own child process.
package main

import (
	"fmt"
	"io"
	"os"

	"kiln/components/entry"
)

func main() {
	// The kernel starts /init as PID 1 with no arguments: boot the machine.
	if os.Getpid() == 1 {
		pid1() // never returns
	}
	// The component entry point bypasses cobra: its arguments belong to the
	// upstream command, flags and all.
	if len(os.Args) > 1 && os.Args[1] == "component" {
		os.Exit(runComponent(os.Args[2:], os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func runComponent(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintf(stderr, "usage: kiln-node component NAME [ARGS...]\ncomponents: %v\n", entry.Names())
		return 2
	}
	f, ok := entry.Lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "kiln-node: unknown component %q (have %v)\n", args[0], entry.Names())
		return 2
	}
	return f(args[1:])
}
