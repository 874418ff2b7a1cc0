// Command openapipatch makes the generated OpenAPI document describe the
// JSON the API really speaks (apijson), which protoc-gen-openapiv2 cannot
// know: enums are lowercase names without their type prefix ("reflect", not
// "MODE_REFLECT"), and 64-bit integers are numbers, not strings. It rewrites
// the file in place, deterministically.
//
// Usage: go run ./openapipatch <kgents.swagger.json>
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"unicode"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: openapipatch <file>")
		os.Exit(2)
	}
	if err := patch(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "openapipatch:", err)
		os.Exit(1)
	}
}

func patch(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return err
	}
	defs, _ := doc["definitions"].(map[string]any)
	renames := map[string]string{}
	for name, d := range defs {
		def, _ := d.(map[string]any)
		values, ok := def["enum"].([]any)
		if !ok {
			continue
		}
		prefix := enumPrefix(strings.TrimLeftFunc(name, func(r rune) bool { return !unicode.IsUpper(r) }))
		for i, v := range values {
			s, _ := v.(string)
			short := strings.ToLower(strings.TrimPrefix(s, prefix))
			renames[s] = short
			values[i] = short
		}
		if dv, ok := def["default"].(string); ok {
			def["default"] = strings.ToLower(strings.TrimPrefix(dv, prefix))
		}
	}
	// Longest names first, so MODE_REFLECT is not half-replaced by a shorter one.
	names := make([]string, 0, len(renames))
	for n := range renames {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		return len(names[i]) > len(names[j]) || len(names[i]) == len(names[j]) && names[i] < names[j]
	})
	walk(doc, names, renames)

	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return err
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}

// walk fixes 64-bit integer schemas and enum names inside descriptions.
func walk(v any, names []string, renames map[string]string) {
	switch t := v.(type) {
	case map[string]any:
		if t["type"] == "string" && (t["format"] == "int64" || t["format"] == "uint64") {
			t["type"] = "integer"
		}
		for k, child := range t {
			if s, ok := child.(string); ok && (k == "description" || k == "title") {
				for _, n := range names {
					s = strings.ReplaceAll(s, n, renames[n])
				}
				t[k] = s
				continue
			}
			walk(child, names, renames)
		}
	case []any:
		for _, child := range t {
			walk(child, names, renames)
		}
	}
}

// enumPrefix turns SessionStatus into SESSION_STATUS_.
func enumPrefix(name string) string {
	var sb strings.Builder
	for i, r := range name {
		if i > 0 && unicode.IsUpper(r) {
			sb.WriteByte('_')
		}
		sb.WriteRune(unicode.ToUpper(r))
	}
	return sb.String() + "_"
}
