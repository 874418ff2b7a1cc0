// Command openapilint validates an OpenAPI 3.1 document with pb33f's
// libopenapi-validator: the document against the OpenAPI 3.1 schema, every
// $ref resolved while building the model, and a few rules of this project
// (a unique operationId and at least one response on every operation). Any
// finding is an error: the exit status is 1.
//
// It is a module of its own (tools/openapilint/go.mod) so that libopenapi's
// dependencies never move buf's or golangci-lint's in tools/go.mod.
//
// Usage: go run . <openapi.json>
package main

import (
	"fmt"
	"os"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: openapilint <openapi.json>")
		os.Exit(2)
	}
	n, err := lint(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "openapilint:", err)
		os.Exit(1)
	}
	if n > 0 {
		fmt.Fprintf(os.Stderr, "openapilint: %s: %d error(s)\n", os.Args[1], n)
		os.Exit(1)
	}
	fmt.Printf("openapilint: %s: OpenAPI 3.1, 0 errors\n", os.Args[1])
}

func lint(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	doc, err := libopenapi.NewDocument(data)
	if err != nil {
		return 0, err
	}
	if v := doc.GetVersion(); v != "3.1.0" {
		return 0, fmt.Errorf("version %q, want 3.1.0", v)
	}
	errs := 0
	model, err := doc.BuildV3Model()
	if err != nil {
		fmt.Fprintln(os.Stderr, "model:", err)
		errs++
	}
	v, verrs := validator.NewValidator(doc)
	for _, e := range verrs {
		fmt.Fprintln(os.Stderr, "validator:", e)
		errs++
	}
	if v != nil {
		if ok, findings := v.ValidateDocument(); !ok {
			for _, f := range findings {
				fmt.Fprintf(os.Stderr, "schema: %s: %s\n", f.Message, f.Reason)
				for _, se := range f.SchemaValidationErrors {
					fmt.Fprintf(os.Stderr, "  at %s (line %d): %s\n", se.FieldPath, se.Line, se.Reason)
				}
				errs++
			}
		}
	}
	if model == nil || model.Model.Paths == nil {
		return errs + 1, nil
	}
	ids := map[string]string{}
	for p, item := range model.Model.Paths.PathItems.FromOldest() {
		for m, op := range item.GetOperations().FromOldest() {
			where := m + " " + p
			switch {
			case op.OperationId == "":
				fmt.Fprintln(os.Stderr, where+": no operationId")
				errs++
			case ids[op.OperationId] != "":
				fmt.Fprintf(os.Stderr, "%s: operationId %s also on %s\n", where, op.OperationId, ids[op.OperationId])
				errs++
			default:
				ids[op.OperationId] = where
			}
			if op.Responses == nil || (op.Responses.Codes.Len() == 0 && op.Responses.Default == nil) {
				fmt.Fprintln(os.Stderr, where+": no responses")
				errs++
			}
		}
	}
	return errs, nil
}
