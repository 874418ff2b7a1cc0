// Package agentese is the AGENTESE domain: a precise path grammar, a registry
// of nodes (interaction points such as world.house or self.soul) that declare
// their aspects (verbs) per observer archetype, and resolution and invocation
// with the observer bound to the caller's API key.
//
// A path is dot-separated lowercase segments:
//
//	context.holon[.more].aspect     world.house.manifest, self.soul.challenge
//
// The context is one of world, self, concept, void and time. A node path
// (context.holon[.more], at least two segments) names a node; an aspect path
// adds the verb (at least three segments). Every node affords the base aspects
// manifest, witness and affordances; everything else depends on the
// observer's archetype. See docs/agentese.md for every node.
//
// Design rules the package keeps:
//
//   - Input never reaches a node unchecked: the kwargs envelope (64 KiB, depth
//     16), the path grammar, the archetype (known, and one the key was given),
//     the node, the affordance and every kwarg are checked, in that order,
//     before an aspect runs. Checks are linear in the input and bounded.
//   - Aspects dispatch through explicit tables (a node's aspect map), never by
//     reflection on caller-supplied names.
//   - Errors are *Error values carrying a Kind the transport maps to a status
//     code; their text is written for the caller, echoes input only escaped
//     and truncated, explains the grammar and suggests the closest valid path.
//   - State (entropy pools, memories, traces, ...) is per tenant, in memory,
//     owned by a Registry instance and bounded in tenants and in entries.
//
// Adding a node is one file (node_<context>_<holon>.go) that declares the
// node and registers its constructor with registerBuiltin in an init
// function.
package agentese
