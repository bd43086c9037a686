package oauth

import (
	"errors"
	"net/http"

	"github.com/valet-dev/valet/broker"
)

// RFC 6749 section 5.2 error codes, and those of RFC 8707, RFC 9396 and
// RFC 9449 that the token endpoint answers.
const (
	ErrInvalidRequest              = "invalid_request"
	ErrInvalidClient               = "invalid_client"
	ErrInvalidGrant                = "invalid_grant"
	ErrUnauthorizedClient          = "unauthorized_client"
	ErrUnsupportedGrantType        = "unsupported_grant_type"
	ErrInvalidScope                = "invalid_scope"
	ErrInvalidTarget               = "invalid_target"
	ErrInvalidAuthorizationDetails = "invalid_authorization_details"
	ErrInvalidDPoPProof            = "invalid_dpop_proof"
	// ErrUseDPoPNonce (RFC 9449 section 8): the proof must carry the nonce
	// of the DPoP-Nonce response header.
	ErrUseDPoPNonce = "use_dpop_nonce"
	// ErrTemporarilyUnavailable (503): a dependency is down; nothing was
	// issued. ErrServerError (500): a fault of Valet's.
	ErrTemporarilyUnavailable = "temporarily_unavailable"
	ErrServerError            = "server_error"
)

// Error is a refusal of the token endpoint: Code and Description are sent
// (RFC 6749 section 5.2 error and error_description), Err only logged.
type Error struct {
	Code        string
	Description string
	Status      int
	Err         error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Description + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Description
}

func (e *Error) Unwrap() error { return e.Err }

// refuse builds a 400 refusal.
func refuse(code, description string) *Error {
	return &Error{Code: code, Description: description, Status: http.StatusBadRequest}
}

// errorBody is the RFC 6749 section 5.2 answer (OAuthError in openapi.yaml).
type errorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	RequestID   string `json:"request_id,omitempty"`
}

// via says how a request described its task, for the error a denial of
// the task maps to.
type via int

const (
	viaDetails via = iota // authorization_details
	viaScope              // scope
)

// fromBroker maps a domain error of Service.DeclareWith to its OAuth
// answer: what the template refuses of the task is a fault of the task's
// description (invalid_authorization_details or invalid_scope), an audience
// the template does not list is invalid_target, any other policy or control
// denial refuses the grant, a DPoP failure is invalid_dpop_proof, and a
// dependency down is 503.
func fromBroker(err error, grant string, how via) *Error {
	var be *broker.Error
	if !errors.As(err, &be) {
		return &Error{Code: ErrServerError, Description: "internal error", Status: http.StatusInternalServerError, Err: err}
	}
	taskCode := ErrInvalidAuthorizationDetails
	if how == viaScope {
		taskCode = ErrInvalidScope
	}
	e := &Error{Description: be.Message, Status: http.StatusBadRequest, Err: err}
	switch {
	case be.Code == broker.CodeUnavailable:
		e.Code, e.Status = ErrTemporarilyUnavailable, http.StatusServiceUnavailable
	case be.Code == broker.CodeTooManyRequests:
		e.Code, e.Status = ErrTemporarilyUnavailable, http.StatusTooManyRequests
	case be.Code == broker.CodeUnauthenticated:
		// The caller was authenticated before Declare: what is left to
		// fail is the DPoP proof.
		e.Code = ErrInvalidDPoPProof
	case be.Code == broker.CodeInvalid:
		e.Code = taskCode
	case be.Code == broker.CodeForbidden && be.Rule == "audience":
		e.Code = ErrInvalidTarget
	case be.Code == broker.CodeForbidden && (be.Rule == "template" || be.Rule == "principals" || be.Rule == "tools"):
		e.Code = taskCode
	case be.Code == broker.CodeForbidden && grant == GrantClientCredentials:
		e.Code = ErrUnauthorizedClient
	case be.Code == broker.CodeForbidden:
		e.Code = ErrInvalidGrant
	default:
		e.Code, e.Description, e.Status = ErrServerError, "internal error", http.StatusInternalServerError
	}
	return e
}
