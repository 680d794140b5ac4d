package testutil

import (
	"net"
	"testing"
)

// FreeAddr is a TCP address on 127.0.0.1 free when asked, for a server
// the test starts right after.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
