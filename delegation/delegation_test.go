package delegation

import (
	"strings"
	"testing"
)

// TestNewRejectsMissingDependencies: a Service without its core, its
// task-token issuer or its auditor is refused at start-up, naming each,
// rather than failing the first exchange.
func TestNewRejectsMissingDependencies(t *testing.T) {
	_, err := New(Config{})
	if err == nil {
		t.Fatal("New(Config{}) = nil error")
	}
	for _, want := range []string{"core", "task token issuer", "auditor"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name the missing %s", err, want)
		}
	}
}
