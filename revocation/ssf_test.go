package revocation_test

import (
	"strconv"
	"testing"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
	"github.com/valet-dev/valet/ssf"
)

func TestMemorySSFStoreConformance(t *testing.T) {
	conformance.SSF(t, func(t *testing.T) ssf.Store { return revocation.NewMemorySSFStore(nil) })
}

func TestRedisSSFStoreConformance(t *testing.T) {
	srv := redistest.Start(t)
	n := 0
	conformance.SSF(t, func(t *testing.T) ssf.Store {
		n++
		c, err := revocation.NewClient(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := revocation.NewRedisSSFStore(c, "ssf"+strconv.Itoa(n))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
