package config_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestEveryVariableIsDocumented keeps docs/configuration.md honest: each
// variable the loader reads (names are string literals handed to the reader)
// must appear there.
func TestEveryVariableIsDocumented(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("config.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	calls := regexp.MustCompile(`r\.[a-z0-9]+\(("[A-Z][A-Z0-9_]+")(?:, ("[A-Z][A-Z0-9_]+"))?`).FindAllStringSubmatch(string(src), -1)
	if len(calls) < 30 {
		t.Fatalf("found only %d variables in config.go; has the reader changed shape?", len(calls))
	}
	for _, c := range calls {
		for _, name := range c[1:] {
			name = strings.Trim(name, `"`)
			if name != "" && !strings.Contains(string(doc), "`"+name+"`") {
				t.Errorf("%s is read by config.go but not documented in docs/configuration.md", name)
			}
		}
	}
}
