// Package metering meters every tenant call: it emits the CloudEvents of
// SPEC §4.7 (api.request for every authenticated call, including those quota
// rejects; llm.tokens, agentese.invoke, session.create and session.message
// for what the services report through a Recorder in the call's context).
// Events go to an Emitter (the durable JetStream outbox in production); the
// call never waits on the network for them.
package metering
