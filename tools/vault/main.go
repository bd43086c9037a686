// Command vault builds HashiCorp Vault's own server from its Go module, so that
// Valet's tests and benchmarks run against a real Vault without a download.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
