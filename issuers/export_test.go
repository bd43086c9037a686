package issuers

// NewLoginTag exposes newLoginTag to the external tests.
var NewLoginTag = newLoginTag
