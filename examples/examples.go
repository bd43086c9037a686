// Package examples holds the example template set that `valet dev` serves and
// that the README's walk-through uses.
package examples

import "embed"

// Templates holds templates/*.yaml.
//
//go:embed templates/*.yaml
var Templates embed.FS
