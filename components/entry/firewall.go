package entry

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
)

// runFirewall is the firewall task: the node's Prepare already loaded
// kiln's nftables table before any component started (components.Firewall);
// the task loads the same ruleset again (one atomic nft transaction that
// replaces the table, so it is idempotent), and prints the table in force
// to the task's log.
func runFirewall(args []string) int {
	fs := flag.NewFlagSet("firewall", flag.ContinueOnError)
	ruleset := fs.String("ruleset", "", "nft ruleset file (written by the node at start)")
	table := fs.String("table", "", "the inet table the ruleset replaces")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *ruleset == "" || *table == "" {
		return usageError("firewall", fmt.Errorf("--ruleset and --table are required"))
	}
	if out, err := exec.Command("nft", "-f", *ruleset).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "firewall: nft -f %s: %v: %s\n", *ruleset, err, out)
		return 1
	}
	out, err := exec.Command("nft", "list", "table", "inet", *table).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "firewall: nft list table inet %s: %v: %s\n", *table, err, out)
		return 1
	}
	fmt.Fprintf(os.Stderr, "firewall: in force:\n%s", out)
	return 0
}
