package nodeapi

import "testing"

func TestCheckVolumeName(t *testing.T) {
	for name, ok := range map[string]bool{
		"pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6": true,
		"pvc-0F8E6C1A-3B2D-4C5E-8F90-A1B2C3D4E5F6": false, // the API server's UIDs are lowercase
		"":           false,
		"pvc-":       false,
		"..":         false,
		"pvc-../etc": false,
		"pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6/..":  false,
		"pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6/x":   false,
		"../pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6":  false,
		"pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6\n":   false,
		"pv-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6":      false,
		"pvc-0f8e6c1a-3b2d-4c5e-8f90-a1b2c3d4e5f6-old": false,
	} {
		if err := CheckVolumeName(name); (err == nil) != ok {
			t.Errorf("CheckVolumeName(%q) = %v, want ok=%t", name, err, ok)
		}
	}
}
