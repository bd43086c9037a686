package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/valet-dev/valet/inventory"
)

// InventoryConfig is the `inventory:` block: the owner labels computed from
// each agent's identity-token claims, and how long an agent not seen stays
// in the inventory.
//
//	inventory:
//	  labels: [{name: owner, value: 'claims.team'}]
//	  retention: 720h
type InventoryConfig struct {
	Labels    []inventory.LabelRule `yaml:"labels"`
	Retention Duration              `yaml:"retention"`
}

// validate compiles the label rules (every problem, each at its path).
func (c InventoryConfig) validate() error {
	var errs []error
	if c.Retention < 0 {
		errs = append(errs, fmt.Errorf("inventory.retention: must not be negative (0 keeps the default, 720h)"))
	} else if c.Retention > 0 && time.Duration(c.Retention) < time.Minute {
		errs = append(errs, fmt.Errorf("inventory.retention: %s is shorter than a minute", time.Duration(c.Retention)))
	}
	if _, err := c.labeler(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// labeler compiles the label rules once.
func (c InventoryConfig) labeler() (*inventory.Labeler, error) {
	return inventory.NewLabeler("inventory.labels", c.Labels)
}
