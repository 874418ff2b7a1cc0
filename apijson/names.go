package apijson

import (
	"strings"

	"google.golang.org/grpc/codes"
)

// SnakeCase turns a CamelCase name into lower snake case, the way the API
// names things derived from Go and protobuf names: "PermissionDenied" →
// "permission_denied", "SessionStatus" → "session_status". A run of
// capitals is one word ("OK" → "ok", "HTTPStatus" → "http_status").
func SnakeCase(name string) string {
	upper := func(i int) bool { return i >= 0 && i < len(name) && 'A' <= name[i] && name[i] <= 'Z' }
	var b strings.Builder
	b.Grow(len(name) + 4)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper(i) {
			// A capital starts a word after a lower-case letter or digit, or
			// when it is the last capital of a run followed by lower case.
			if i > 0 && name[i-1] != '_' && (!upper(i-1) || (i+1 < len(name) && !upper(i+1) && name[i+1] != '_')) {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// codeNames are the names of the codes grpc-go defines, computed once.
var codeNames = func() [codes.Unauthenticated + 1]string {
	var names [codes.Unauthenticated + 1]string
	for c := range names {
		names[c] = SnakeCase(codes.Code(c).String())
	}
	return names
}()

// CodeName is a gRPC code's name in the API's error bodies and error
// events: its Go name in lower snake case ("permission_denied",
// "resource_exhausted"). A code grpc-go does not define is "unknown".
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return codeNames[codes.Unknown]
}
