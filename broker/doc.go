// Package broker owns Valet's domain: tasks, principals, templates, grants and
// credentials, and the Service that declares, completes, revokes and
// introspects them. It imports no adapter; issuers and ledgers plug in
// through the small interfaces declared next to the code that consumes them.
package broker
