// Package openapi embeds the OpenAPI (v2) document generated from the
// .proto files by `make generate`, served at /openapi.json.
package openapi

import _ "embed"

// Document is kgents.swagger.json.
//
//go:embed kgents.swagger.json
var Document []byte
