// Package auth authenticates every tenant call and enforces the scope each
// RPC requires. The caller's tenancy.Identity goes into the context for the
// handlers and the interceptors after this one. Which scope each method needs
// is declared in one table (a Rules value built in server/methods.go), never
// checked in handlers; a method missing from the table is refused, so a new
// RPC cannot ship unprotected by accident.
package auth

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/tenancy"
)

// Authenticator checks a raw API key; *tenancy.Keyring is one.
type Authenticator interface {
	Authenticate(rawKey string) (*tenancy.Identity, error)
}

// Rule is what one method requires.
type Rule struct {
	// Public methods (health, reflection) are not a tenant's: no key needed.
	Public bool
	// Scope the key must carry.
	Scope tenancy.Scope
	// What the call does, for the refusal message: "create sessions".
	Action string
	// ScopeFor, when set, raises the scope from the request itself (an
	// AGENTESE invocation of a mutating aspect needs write). It returns the
	// scope needed and the action for the message.
	ScopeFor func(req any) (tenancy.Scope, string)
	// AllowInactiveTenant lets a suspended or canceled tenant (or a
	// past_due one after its grace) make the call, so it can see its state
	// and pay: GET /v1/tenant, usage, billing, key listing (SPEC §4.13).
	// Without it such a tenant's call fails with 402 (FailedPrecondition
	// carrying an ErrorInfo whose reason is "tenant_suspended" or
	// "tenant_canceled", see TenantInactiveError).
	AllowInactiveTenant bool
}

// Rules is the table: full method name -> rule, plus whole public services.
type Rules struct {
	Methods        map[string]Rule
	PublicServices []string // e.g. "grpc.health.v1.Health"
}

// lookup finds a method's rule.
func (r Rules) lookup(fullMethod string) (Rule, bool) {
	if rule, ok := r.Methods[fullMethod]; ok {
		return rule, true
	}
	for _, svc := range r.PublicServices {
		if strings.HasPrefix(fullMethod, "/"+svc+"/") {
			return Rule{Public: true}, true
		}
	}
	return Rule{}, false
}

// Interceptor authenticates calls.
type Interceptor struct {
	auth  Authenticator
	rules Rules
}

// New returns the interceptor.
func New(a Authenticator, rules Rules) *Interceptor {
	return &Interceptor{auth: a, rules: rules}
}

// authenticate returns ctx with the caller's identity, or the error to return.
func (i *Interceptor) authenticate(ctx context.Context, method string) (context.Context, Rule, error) {
	rule, ok := i.rules.lookup(method)
	if !ok {
		return nil, rule, status.Errorf(codes.PermissionDenied, "method %s is not available", method)
	}
	if rule.Public {
		return ctx, rule, nil
	}
	id, err := i.auth.Authenticate(keyFromContext(ctx))
	if err != nil {
		return nil, rule, status.Error(codes.Unauthenticated, err.Error())
	}
	if err := checkScope(id, rule.Scope, rule.Action); err != nil {
		return nil, rule, err
	}
	if !rule.AllowInactiveTenant {
		if code, detail := id.Inactive(time.Now()); code != "" {
			return nil, rule, TenantInactiveError(code, detail)
		}
	}
	if t := interceptors.TagsFrom(ctx); t != nil {
		t.TenantID, t.KeyID = id.TenantID, id.KeyID
	}
	return tenancy.WithIdentity(ctx, id), rule, nil
}

// TenantInactiveDomain is the ErrorInfo domain of a refusal for a tenant's
// status; the REST layer answers such a FailedPrecondition with 402 and the
// reason as the body's code.
const TenantInactiveDomain = "kgents.tenant"

// TenantInactiveError is the refusal of a suspended or canceled tenant's
// call: FailedPrecondition with an ErrorInfo {reason: code ("tenant_suspended",
// "tenant_canceled"), domain: TenantInactiveDomain}; detail is the message.
func TenantInactiveError(code, detail string) error {
	st, err := status.New(codes.FailedPrecondition, detail).WithDetails(&errdetails.ErrorInfo{Reason: code, Domain: TenantInactiveDomain})
	if err != nil {
		return status.Error(codes.FailedPrecondition, detail)
	}
	return st.Err()
}

// TenantInactiveCode returns the reason of a TenantInactiveError ("" for
// any other status).
func TenantInactiveCode(st *status.Status) string {
	if st.Code() != codes.FailedPrecondition {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == TenantInactiveDomain {
			return ei.GetReason()
		}
	}
	return ""
}

func checkScope(id *tenancy.Identity, need tenancy.Scope, action string) error {
	if id.Scopes.Has(need) {
		return nil
	}
	msg := fmt.Sprintf("API key requires '%s' scope", need)
	if action != "" {
		msg += " to " + action
	}
	return status.Error(codes.PermissionDenied, msg)
}

// Unary is the unary interceptor.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, rule, err := i.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if rule.ScopeFor != nil {
			need, action := rule.ScopeFor(req)
			if err := checkScope(tenancy.IdentityFrom(ctx), need, action); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

// Stream is the stream interceptor. A request-dependent scope is checked
// when the handler receives the request.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, rule, err := i.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		w := interceptors.WithContext(ss, ctx)
		if rule.ScopeFor != nil {
			return handler(srv, &scopedStream{WrappedServerStream: w, scopeFor: rule.ScopeFor})
		}
		return handler(srv, w)
	}
}

// scopedStream checks each request it receives against the method's
// request-dependent scope.
type scopedStream struct {
	*middleware.WrappedServerStream
	scopeFor func(req any) (tenancy.Scope, string)
}

func (s *scopedStream) RecvMsg(m any) error {
	if err := s.WrappedServerStream.RecvMsg(m); err != nil {
		return err
	}
	need, action := s.scopeFor(m)
	return checkScope(tenancy.IdentityFrom(s.Context()), need, action)
}

// keyFromContext is KeyFromMetadata reading only the two keys it needs.
func keyFromContext(ctx context.Context) string {
	if k := interceptors.FirstValue(ctx, "x-api-key"); k != "" {
		return strings.TrimSpace(k)
	}
	return bearer(interceptors.FirstValue(ctx, "authorization"))
}

// KeyFromMetadata extracts the API key: x-api-key, or a Bearer token in
// authorization. The REST layer lifts ?api_key= into x-api-key for GET
// streams before the call gets here.
func KeyFromMetadata(md metadata.MD) string {
	if v := md.Get("x-api-key"); len(v) > 0 && v[0] != "" {
		return strings.TrimSpace(v[0])
	}
	if v := md.Get("authorization"); len(v) > 0 {
		return bearer(v[0])
	}
	return ""
}

// KeyFromHTTP is KeyFromMetadata for HTTP headers.
func KeyFromHTTP(h http.Header) string {
	if v := h.Get("X-API-Key"); v != "" {
		return strings.TrimSpace(v)
	}
	return bearer(h.Get("Authorization"))
}

func bearer(v string) string {
	const prefix = "bearer "
	if len(v) > len(prefix) && strings.EqualFold(v[:len(prefix)], prefix) {
		return strings.TrimSpace(v[len(prefix):])
	}
	return ""
}
