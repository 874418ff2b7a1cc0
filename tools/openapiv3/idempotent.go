package main

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// idempotentOption is the method option that marks an RPC honouring
// Idempotency-Key (proto/kgents/api/v1/options.proto).
const idempotentOption = "kgents.api.v1.idempotent"

// idempotentOperations returns the operation ids (grpc-gateway's
// "<Service>_<Method>") of the RPCs marked (kgents.api.v1.idempotent) = true
// in a descriptor set. The option's number is read from its declaration in
// the set, so this program knows only its name.
func idempotentOperations(descriptorSet []byte) ([]string, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(descriptorSet, &set); err != nil {
		return nil, fmt.Errorf("reading the descriptor set: %w", err)
	}
	var number protowire.Number
	for _, f := range set.GetFile() {
		for _, x := range f.GetExtension() {
			if f.GetPackage()+"."+x.GetName() == idempotentOption && x.GetExtendee() == ".google.protobuf.MethodOptions" {
				number = protowire.Number(x.GetNumber())
			}
		}
	}
	if number == 0 {
		return nil, fmt.Errorf("the descriptor set declares no method option %s", idempotentOption)
	}
	var ops []string
	for _, f := range set.GetFile() {
		for _, svc := range f.GetService() {
			for _, m := range svc.GetMethod() {
				marked, err := boolOption(m.GetOptions(), number)
				if err != nil {
					return nil, fmt.Errorf("%s.%s: %w", svc.GetName(), m.GetName(), err)
				}
				if marked {
					ops = append(ops, svc.GetName()+"_"+m.GetName())
				}
			}
		}
	}
	if len(ops) == 0 {
		return nil, fmt.Errorf("no RPC is marked %s: is it the right descriptor set?", idempotentOption)
	}
	slices.Sort(ops)
	return ops, nil
}

// boolOption reads a bool extension, which this program does not link, from
// the options' unknown fields (the last value wins, as in protobuf).
func boolOption(opts *descriptorpb.MethodOptions, number protowire.Number) (bool, error) {
	if opts == nil {
		return false, nil
	}
	b := opts.ProtoReflect().GetUnknown()
	value := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false, protowire.ParseError(n)
		}
		b = b[n:]
		if num == number && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false, protowire.ParseError(n)
			}
			value = v != 0
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return false, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return value, nil
}
