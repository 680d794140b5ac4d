package boot

import (
	"strings"
	"testing"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/init/boot/blkdev"
)

func TestDecideDisk(t *testing.T) {
	if a, err := decideDisk("/dev/vda", blkdev.Probe{}, node.FormatAuto); err != nil || a != diskFormat {
		t.Errorf("blank, auto: %v %v", a, err)
	}
	for _, policy := range []node.Format{node.FormatAuto, node.FormatNever} {
		if a, err := decideDisk("/dev/vda", blkdev.Probe{Type: "ext4", Label: image.StateLabel}, policy); err != nil || a != diskMount {
			t.Errorf("ext4, %s: %v %v, want mount", policy, a, err)
		}
	}
	for _, tc := range []struct {
		p      blkdev.Probe
		policy node.Format
		want   []string
	}{
		{blkdev.Probe{}, node.FormatNever, []string{"/dev/vda", "blank", "storage.format", "mke2fs", "auto"}},
		{blkdev.Probe{Type: "xfs", Label: "data"}, node.FormatAuto, []string{"/dev/vda", "xfs", "refusing to format", "wipefs"}},
		{blkdev.Probe{Type: "gpt"}, node.FormatAuto, []string{"/dev/vda", "gpt partition table", "refusing"}},
		{blkdev.Probe{Type: "data"}, node.FormatAuto, []string{"/dev/vda", "unrecognized data", "refusing"}},
	} {
		_, err := decideDisk("/dev/vda", tc.p, tc.policy)
		if err == nil {
			t.Errorf("%+v %s: no error", tc.p, tc.policy)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %q", err, w)
			}
		}
	}
}
