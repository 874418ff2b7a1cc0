// Command openapiv3 writes the OpenAPI 3.1 document served at /openapi.json
// from the Swagger 2 document that protoc-gen-openapiv2 generates from the
// .proto files (and openapipatch corrects). It is a mechanical pipeline, run
// by `make generate`, whose output is committed and checked by
// `make check-generated`:
//
//  1. Swagger 2 → OpenAPI 3.0 with kin-openapi's openapi2conv, the
//     maintained converter;
//  2. OpenAPI 3.0 → 3.1, mechanically: the version, `nullable` as a "null"
//     type, schema `example` as `examples`;
//  3. what the generator cannot know, patched in deterministically and in
//     one reviewed place (this file): the streamed routes as
//     text/event-stream with one schema per event type (derived from the
//     proto stream messages: each oneof member is an event named after its
//     field), the Idempotency-Key parameter (on the RPCs marked
//     (kgents.api.v1.idempotent) in the .proto files, read from their
//     descriptor set: the same option kgentsd's interceptor reads), the
//     Last-Event-ID and api_key parameters, the
//     security schemes (X-API-Key and Bearer), and the routes served outside
//     grpc-gateway (health, probes, the index, the reference itself, the
//     Stripe webhook).
//
// It also writes openapi.go, the package that embeds both documents.
//
// Usage: go run ./openapiv3 <kgents.swagger.json> <descriptor set> <out dir>
// (the descriptor set: `buf build --as-file-descriptor-set -o <file>`).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
)

// Document names inside the out dir.
const (
	v3Name = "kgents.openapi.json"
	goName = "openapi.go"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: openapiv3 <kgents.swagger.json> <descriptor set> <out dir>")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "openapiv3:", err)
		os.Exit(1)
	}
}

func run(in, descriptors, outDir string) error {
	data, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	fds, err := os.ReadFile(descriptors)
	if err != nil {
		return err
	}
	idempotent, err := idempotentOperations(fds)
	if err != nil {
		return err
	}
	doc, err := convert(data, idempotent)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, v3Name), out.Bytes(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(outDir, goName), []byte(goSource(filepath.Base(in))), 0o644)
}

// convert turns the Swagger 2 document into the patched OpenAPI 3.1 one.
func convert(swagger []byte, idempotent []string) (map[string]any, error) {
	var v2 openapi2.T
	if err := json.Unmarshal(swagger, &v2); err != nil {
		return nil, fmt.Errorf("reading Swagger 2: %w", err)
	}
	v3, err := openapi2conv.ToV3(&v2)
	if err != nil {
		return nil, fmt.Errorf("converting to OpenAPI 3.0: %w", err)
	}
	b, err := json.Marshal(v3)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	to31(doc)
	// The converter drops the descriptions beside a $ref (3.0 ignores them);
	// the event descriptions are kept from the Swagger 2 definitions.
	var src struct {
		Definitions map[string]struct {
			Properties map[string]struct {
				Description string `json:"description"`
			} `json:"properties"`
		} `json:"definitions"`
	}
	if err := json.Unmarshal(swagger, &src); err != nil {
		return nil, err
	}
	describe := func(schema, field string) string {
		return src.Definitions[schema].Properties[field].Description
	}
	if err := patch(doc, describe, idempotent); err != nil {
		return nil, err
	}
	return doc, nil
}

// to31 is the mechanical OpenAPI 3.0 → 3.1 step.
func to31(doc map[string]any) {
	doc["openapi"] = "3.1.0"
	delete(doc, "servers") // "/" is the default; the converter writes an empty host
	walkSchemas(doc)
}

// walkSchemas rewrites 3.0 schema keywords into their JSON Schema 2020-12
// form wherever they appear.
func walkSchemas(v any) {
	switch t := v.(type) {
	case map[string]any:
		if n, ok := t["nullable"].(bool); ok {
			delete(t, "nullable")
			if n {
				switch typ := t["type"].(type) {
				case string:
					t["type"] = []any{typ, "null"}
				case nil:
					if ref, ok := t["$ref"]; ok {
						delete(t, "$ref")
						t["anyOf"] = []any{map[string]any{"$ref": ref}, map[string]any{"type": "null"}}
					}
				}
			}
		}
		if ex, ok := t["example"]; ok && isSchema(t) {
			delete(t, "example")
			t["examples"] = []any{ex}
		}
		for _, child := range t {
			walkSchemas(child)
		}
	case []any:
		for _, child := range t {
			walkSchemas(child)
		}
	}
}

// isSchema tells a schema object from a media type or parameter object, whose
// `example` stays.
func isSchema(m map[string]any) bool {
	_, typed := m["type"]
	_, props := m["properties"]
	_, in := m["in"]
	return (typed || props) && !in
}

// Event streams: what the stream routes answer, in SSE.
const sseNote = "Server-Sent Events (text/event-stream). Each frame is `id:` (opaque, increasing; resume from it), " +
	"`event:` (the event type) and `data:` (one line of JSON, the event's object below). " +
	"A `: ping` comment opens the stream and repeats every SSE_HEARTBEAT. A failure before the stream opens is an ordinary JSON error."

func patch(doc map[string]any, describe func(schema, field string) string, idempotent []string) error {
	comps := obj(doc, "components")
	schemas := obj(comps, "schemas")
	params := obj(comps, "parameters")
	params["IdempotencyKey"] = map[string]any{
		"name": "Idempotency-Key", "in": "header", "required": false,
		"description": "Replays the first successful response for 24 h (per tenant and key) instead of running the request again " +
			"(`Idempotent-Replayed: true`); a repeat with a different body, or while the first still runs, is 409. At most 255 printable characters.",
		"schema": map[string]any{"type": "string", "maxLength": 255},
	}
	params["LastEventID"] = map[string]any{
		"name": "Last-Event-ID", "in": "header", "required": false,
		"description": "Resume after this event id (sent by EventSource on reconnect); wins over `after`.",
		"schema":      map[string]any{"type": "string"},
	}
	params["APIKeyQuery"] = map[string]any{
		"name": "api_key", "in": "query", "required": false,
		"description": "The API key, for browser EventSource clients, which cannot set headers. Removed from the URL before logging.",
		"schema":      map[string]any{"type": "string"},
	}
	sec := obj(comps, "securitySchemes")
	if _, ok := sec["ApiKey"]; !ok {
		return fmt.Errorf("the Swagger 2 document has no ApiKey security definition")
	}
	sec["ApiKey"] = map[string]any{
		"type": "apiKey", "in": "header", "name": "X-API-Key",
		"description": "An API key (`kg_…`) in the X-API-Key header.",
	}
	sec["Bearer"] = map[string]any{
		"type": "http", "scheme": "bearer",
		"description": "The same API key as `Authorization: Bearer kg_…`.",
	}
	sec["ApiKeyQuery"] = map[string]any{
		"type": "apiKey", "in": "query", "name": "api_key",
		"description": "The API key as `?api_key=`, accepted on GET …/events only (EventSource).",
	}
	doc["security"] = []any{map[string]any{"ApiKey": []any{}}, map[string]any{"Bearer": []any{}}}

	paths := obj(doc, "paths")
	ops, keyed := 0, 0
	for _, p := range sortedKeys(paths) {
		item := paths[p].(map[string]any)
		for _, m := range sortedKeys(item) {
			op, ok := item[m].(map[string]any)
			if !ok {
				continue
			}
			ops++
			id, _ := op["operationId"].(string)
			if slices.Contains(idempotent, id) {
				addParam(op, "#/components/parameters/IdempotencyKey")
				keyed++
			}
			if err := patchStream(op, schemas, describe); err != nil {
				return fmt.Errorf("%s %s: %w", m, p, err)
			}
			if id == "SessionsService_WatchSession" {
				addParam(op, "#/components/parameters/LastEventID")
				addParam(op, "#/components/parameters/APIKeyQuery")
				op["security"] = []any{
					map[string]any{"ApiKey": []any{}}, map[string]any{"Bearer": []any{}}, map[string]any{"ApiKeyQuery": []any{}},
				}
			}
		}
	}
	if keyed != len(idempotent) {
		return fmt.Errorf("%d RPCs are marked idempotent (%v) but %d operations carry Idempotency-Key: one has no HTTP route", len(idempotent), idempotent, keyed)
	}
	if ops == 0 {
		return fmt.Errorf("no operations")
	}
	// POST …/messages streams unless the body says "stream": false: it
	// answers either form, as its twin …/messages:stream shows.
	send := opAt(paths, "/v1/kgent/sessions/{session_id}/messages", "post")
	stream := opAt(paths, "/v1/kgent/sessions/{session_id}/messages:stream", "post")
	if send == nil || stream == nil {
		return fmt.Errorf("the session message routes are missing")
	}
	sendOK := obj(obj(send, "responses"), "200")
	streamContent := obj(obj(obj(stream, "responses"), "200"), "content")
	obj(sendOK, "content")["text/event-stream"] = streamContent["text/event-stream"]
	sendOK["description"] = "By default the turn as Server-Sent Events (text/event-stream, as …/messages:stream); " +
		"with `\"stream\": false` in the body the assistant's Message as JSON."

	schemas["Health"] = map[string]any{
		"type": "object", "description": "Liveness of the service and of each component.", "additionalProperties": true,
		"required":   []any{"status"},
		"properties": map[string]any{"status": map[string]any{"type": "string", "examples": []any{"ok", "degraded"}}},
	}
	schemas["Status"] = map[string]any{
		"type": "object", "required": []any{"status"},
		"properties": map[string]any{"status": map[string]any{"type": "string"}},
	}
	for p, item := range systemPaths() {
		if _, ok := paths[p]; ok {
			return fmt.Errorf("%s is both a gateway route and a system route", p)
		}
		paths[p] = item
	}
	tags, _ := doc["tags"].([]any)
	doc["tags"] = append(tags,
		map[string]any{"name": "system", "description": "Health, probes, the API index and this reference (no API key)."},
		map[string]any{"name": "webhooks", "description": "Stripe's webhook (signed by Stripe, no API key)."})
	return nil
}

// patchStream rewrites an operation the generator marked as streaming (its
// 200 response is "Stream result of …") into a text/event-stream response
// with one schema per event type.
func patchStream(op map[string]any, schemas map[string]any, describe func(schema, field string) string) error {
	ok, _ := obj(op, "responses")["200"].(map[string]any)
	if ok == nil {
		return nil
	}
	content, _ := ok["content"].(map[string]any)
	var result string
	for _, mt := range content {
		s, _ := mt.(map[string]any)["schema"].(map[string]any)
		if title, _ := s["title"].(string); strings.HasPrefix(title, "Stream result of ") {
			props, _ := s["properties"].(map[string]any)
			r, _ := props["result"].(map[string]any)
			result, _ = r["$ref"].(string)
		}
	}
	if result == "" {
		return nil
	}
	msgName := strings.TrimPrefix(result, "#/components/schemas/")
	msg := schemaAt(schemas, result)
	if msg == nil {
		return fmt.Errorf("stream message %s not found", result)
	}
	// A response that wraps one event ({event: SessionEvent}) is that event.
	if props, _ := msg["properties"].(map[string]any); len(props) == 1 {
		if e, _ := props["event"].(map[string]any); e != nil {
			if ref, _ := e["$ref"].(string); ref != "" {
				msgName = strings.TrimPrefix(ref, "#/components/schemas/")
				if msg = schemaAt(schemas, ref); msg == nil {
					return fmt.Errorf("event message %s not found", ref)
				}
			}
		}
	}
	props, _ := msg["properties"].(map[string]any)
	var frames, names []any
	for _, name := range sortedKeys(props) {
		p := props[name].(map[string]any)
		ref, _ := p["$ref"].(string)
		if ref == "" {
			continue // id, session_id, time: the frame's envelope, not an event
		}
		names = append(names, name)
		frames = append(frames, map[string]any{
			"title": name, "type": "object", "description": describe(msgName, name),
			"required": []any{"event", "data"},
			"properties": map[string]any{
				"id":    map[string]any{"type": "string", "description": "The SSE `id:` field."},
				"event": map[string]any{"const": name, "description": "The SSE `event:` field."},
				"data":  map[string]any{"$ref": ref, "description": "The SSE `data:` field: this JSON object on one line."},
			},
		})
	}
	if len(frames) == 0 {
		return fmt.Errorf("stream message %s has no events", result)
	}
	// Errors before the stream opens are JSON, whatever the route produces.
	for code, r := range obj(op, "responses") {
		c, _ := r.(map[string]any)["content"].(map[string]any)
		if mt, found := c["text/event-stream"]; found && code != "200" {
			delete(c, "text/event-stream")
			c["application/json"] = mt
		}
	}
	ok["description"] = "A stream of Server-Sent Events: " + joinNames(names) + "."
	ok["content"] = map[string]any{"text/event-stream": map[string]any{
		"schema": map[string]any{
			"description": sseNote + " One frame is one of the objects below.",
			"oneOf":       frames,
		},
		"x-sse-events": names,
	}}
	return nil
}

func joinNames(names []any) string {
	s := make([]string, len(names))
	for i, n := range names {
		s[i] = "`" + n.(string) + "`"
	}
	return strings.Join(s, ", ")
}

// systemPaths are the routes server/http.go serves beside grpc-gateway.
func systemPaths() map[string]any {
	noKey := []any{}
	get := func(id, summary string, tag string, content map[string]any, extra ...map[string]any) map[string]any {
		op := map[string]any{
			"operationId": id, "summary": summary, "tags": []any{tag}, "security": noKey,
			"responses": map[string]any{"200": map[string]any{"description": "OK", "content": content}},
		}
		for _, e := range extra {
			for k, v := range e {
				op["responses"].(map[string]any)[k] = v
			}
		}
		return map[string]any{"get": op}
	}
	jsonOf := func(ref string) map[string]any {
		return map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/" + ref}}}
	}
	anyJSON := map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object", "additionalProperties": true}}}
	html := map[string]any{"text/html": map[string]any{"schema": map[string]any{"type": "string"}}}
	unavailable := map[string]any{"503": map[string]any{"description": "Not ready (starting or draining).", "content": jsonOf("Status")}}
	webhook := map[string]any{"post": map[string]any{
		"operationId": "Webhooks_Stripe", "tags": []any{"webhooks"}, "security": noKey,
		"summary":     "Stripe's webhook: subscription and invoice events drive the tenant's billing state.",
		"description": "Verified with the Stripe-Signature header (STRIPE_WEBHOOK_SECRET); each event is applied once (deduplicated by its id). See docs/billing.md.",
		"parameters": []any{map[string]any{
			"name": "Stripe-Signature", "in": "header", "required": true, "schema": map[string]any{"type": "string"},
			"description": "Stripe's signature of the body.",
		}},
		"requestBody": map[string]any{"required": true, "content": map[string]any{
			"application/json": map[string]any{"schema": map[string]any{"type": "object", "additionalProperties": true, "description": "A Stripe event."}},
		}},
		"responses": map[string]any{
			"200":     map[string]any{"description": "The event was applied (or was already)."},
			"400":     map[string]any{"description": "The body or its signature is invalid."},
			"501":     map[string]any{"description": "Webhooks are not configured (STRIPE_WEBHOOK_SECRET unset).", "content": jsonOf("v1Error")},
			"503":     map[string]any{"description": "The event could not be stored; Stripe retries.", "content": jsonOf("v1Error")},
			"default": map[string]any{"description": "An error; Stripe retries.", "content": jsonOf("v1Error")},
		},
	}}
	return map[string]any{
		"/":                       get("System_Index", "The API index: name, version and the main endpoints.", "system", anyJSON),
		"/health":                 get("System_Health", "Health of the service and its components (the engine in use, NATS, OpenMeter).", "system", jsonOf("Health")),
		"/health/saas":            get("System_HealthSaaS", "Detailed health of the SaaS pipeline: NATS, OpenMeter, the control plane, Stripe.", "system", anyJSON),
		"/livez":                  get("System_Livez", "Liveness probe.", "system", jsonOf("Status")),
		"/readyz":                 get("System_Readyz", "Readiness probe: 200 once started, 503 while starting or draining.", "system", jsonOf("Status"), unavailable),
		"/openapi.json":           get("System_OpenAPI", "This document (OpenAPI 3.1).", "system", anyJSON),
		"/openapi/v2.json":        get("System_OpenAPIv2", "The same API as Swagger 2 (OpenAPI 2.0), as generated by protoc-gen-openapiv2.", "system", anyJSON),
		"/docs":                   get("System_Docs", "The interactive API reference (Swagger UI) for this document.", "system", html),
		"/webhooks/stripe":        webhook,
		"/webhooks/stripe/health": get("Webhooks_StripeHealth", "Whether Stripe's webhook is configured and when it last delivered an event.", "webhooks", anyJSON),
	}
}

func obj(m map[string]any, key string) map[string]any {
	v, ok := m[key].(map[string]any)
	if !ok {
		v = map[string]any{}
		m[key] = v
	}
	return v
}

func opAt(paths map[string]any, path, method string) map[string]any {
	item, _ := paths[path].(map[string]any)
	op, _ := item[method].(map[string]any)
	return op
}

func schemaAt(schemas map[string]any, ref string) map[string]any {
	s, _ := schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any)
	return s
}

func addParam(op map[string]any, ref string) {
	ps, _ := op["parameters"].([]any)
	op["parameters"] = append(ps, map[string]any{"$ref": ref})
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func goSource(v2Name string) string {
	return `// Code generated by tools/openapiv3 (make generate). DO NOT EDIT.

// Package openapi embeds the API's OpenAPI documents, generated from the
// .proto files: OpenAPI 3.1 (served at /openapi.json) and Swagger 2
// (/openapi/v2.json).
package openapi

import _ "embed"

// Document is the OpenAPI 3.1 document, ` + v3Name + `.
//
//go:embed ` + v3Name + `
var Document []byte

// DocumentV2 is the Swagger 2 document, ` + v2Name + `.
//
//go:embed ` + v2Name + `
var DocumentV2 []byte
`
}
