package entry

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"kiln/components/approve"
)

// approverPoll is how often pending requests are looked at: a joining
// worker waits at most this long for its serving certificate.
const approverPoll = 2 * time.Second

// runApprover decides two kinds of certificate requests (components/approve
// holds the rules): a joining node's kubelet client certificate, approved
// only for a name that no other machine holds (binding a new name to the
// node's identity key), and a kubelet's serving certificate, approved only
// for the node's own names and addresses. It denies the others with the
// reason, and runs until it is stopped. It holds no more than it needs:
// its user may read nodes and CSRs, approve for those two signers, and
// change one ConfigMap (components/addons).
func runApprover(args []string) int {
	fs := flag.NewFlagSet("csr-approver", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the approver's user")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return usageError("csr-approver", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return usageError("csr-approver", err)
	}
	ctx := context.Background()
	waiting := map[string]string{} // CSR name → last reason printed, so a wait is said once
	var lastErr string
	for {
		if err := approveOnce(ctx, cs, waiting); err != nil && err.Error() != lastErr {
			fmt.Fprintf(os.Stderr, "csr-approver: %v (retrying)\n", err)
			lastErr = err.Error()
		} else if err == nil {
			lastErr = ""
		}
		time.Sleep(approverPoll)
	}
}

func approveOnce(ctx context.Context, cs kubernetes.Interface, waiting map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	csrs, err := cs.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing CSRs: %w", err)
	}
	var pending []*certificatesv1.CertificateSigningRequest
	for i := range csrs.Items {
		if len(csrs.Items[i].Status.Conditions) == 0 {
			pending = append(pending, &csrs.Items[i])
		}
	}
	if len(pending) == 0 {
		return nil
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	identities := cs.CoreV1().ConfigMaps(metav1.NamespaceSystem)
	var bound map[string]string
	if cm, err := identities.Get(ctx, approve.IdentitiesConfigMap, metav1.GetOptions{}); err == nil {
		bound = cm.Data
		if bound == nil {
			bound = map[string]string{}
		}
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading %s/%s: %w", metav1.NamespaceSystem, approve.IdentitiesConfigMap, err)
	}
	for _, csr := range pending {
		d := approve.KubeletServing(csr, nodes.Items)
		if d.Verdict == approve.Skip {
			var bind approve.Binding
			if d, bind = approve.NodeClient(csr, nodes.Items, bound); d.Verdict != approve.Skip && bound == nil {
				d = approve.Decision{Verdict: approve.Wait, Reason: "the ConfigMap " + approve.IdentitiesConfigMap + " is not there yet (the addons task makes it)"}
			}
			if d.Verdict == approve.Approve && bind.Name != "" {
				// Bind the name before approving: two requests for one
				// name in one pass see the first one's binding.
				patch := fmt.Sprintf(`{"data":{%q:%q}}`, bind.Name, bind.Key)
				if _, err := identities.Patch(ctx, approve.IdentitiesConfigMap, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "kiln-csr-approver"}); err != nil {
					return fmt.Errorf("binding node name %s: %w", bind.Name, err)
				}
				bound[bind.Name] = bind.Key
			}
		}
		switch d.Verdict {
		case approve.Skip:
			continue
		case approve.Wait:
			if waiting[csr.Name] != d.Reason {
				fmt.Fprintf(os.Stderr, "csr-approver: %s (%s) waits: %s\n", csr.Name, csr.Spec.Username, d.Reason)
				waiting[csr.Name] = d.Reason
			}
			continue
		}
		delete(waiting, csr.Name)
		csr.Status.Conditions = append(csr.Status.Conditions, approve.Condition(d))
		if _, err := cs.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, csr.Name, csr, metav1.UpdateOptions{FieldManager: "kiln"}); err != nil {
			return fmt.Errorf("recording the decision on %s: %w", csr.Name, err)
		}
		verb := "approved"
		if d.Verdict == approve.Deny {
			verb = "DENIED"
		}
		fmt.Fprintf(os.Stderr, "csr-approver: %s %s for %s: %s\n", verb, csr.Name, csr.Spec.Username, d.Reason)
	}
	return nil
}
