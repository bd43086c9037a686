package vaulttest_test

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/vaulttest"
)

// TestOutageKeepsState: Stop and Hang cut Valet's address off, the root
// client still reaches Vault, and after Start the same token works again.
func TestOutageKeepsState(t *testing.T) {
	vs := vaulttest.Start(t, vaulttest.Options{})
	c := vs.Client(vs.ValetToken(time.Hour))
	c.SetClientTimeout(500 * time.Millisecond)
	if _, err := c.Auth().Token().LookupSelf(); err != nil {
		t.Fatalf("lookup-self: %v", err)
	}
	for name, cut := range map[string]func(){"stop": vs.Stop, "hang": vs.Hang} {
		cut()
		if _, err := c.Auth().Token().LookupSelf(); err == nil {
			t.Fatalf("%s: Valet's address still answers", name)
		}
		if _, err := vs.Root().Sys().Health(); err != nil {
			t.Fatalf("%s: the direct address is cut off too: %v", name, err)
		}
		vs.Start()
		if _, err := c.Auth().Token().LookupSelf(); err != nil {
			t.Fatalf("%s: after Start: %v", name, err)
		}
	}
}
