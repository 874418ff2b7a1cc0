// Package apijson is the JSON form of the kgents API's messages, as the REST
// surface, the SSE streams and the stores speak it. It binds messages with
// protoreflect to the tokens of a maintained JSON tokenizer
// (github.com/go-json-experiment/json/jsontext, the future encoding/json/v2),
// and follows the Python service the API replaces rather than protojson:
//
// Writing:
//   - fields are named by their proto names (snake_case) and every field is
//     written, zero values too; an unset optional scalar or message is null,
//     an unset list [] and an unset map {}; of a oneof only the member set;
//   - enums are lowercase strings without their type prefix (MODE_REFLECT is
//     "reflect"); a number this build has no name for is written as a number;
//   - integers, 64-bit ones too, are JSON numbers (counters), not strings;
//   - float and double fields always have a decimal point or an exponent
//     (0.0, 1.0, 1e+21), as Python writes floats; NaN and ±Infinity are the
//     strings "NaN", "Infinity", "-Infinity"; numbers inside a
//     google.protobuf.Value have no declared type and are written plainly;
//   - timestamps are RFC 3339 with microseconds and an explicit +00:00
//     offset, which every Python version's datetime.fromisoformat reads;
//   - strings are escaped so the output can be embedded in JavaScript
//     (U+2028, U+2029); invalid UTF-8 is written as U+FFFD; map and Struct
//     keys are sorted, so the same message is always the same bytes.
//
// Reading (a request body, a stored record):
//   - a field is found by its proto name or its JSON (lowerCamel) name; an
//     unknown field is ignored, its value checked for syntax only;
//   - enums are read case-insensitively, with or without the type prefix,
//     or by number; a wrong name fails with the Python service's message:
//     "Invalid mode 'x'. Valid modes: reflect, advise, challenge, explore";
//   - null leaves a field unset (but is the null google.protobuf.Value);
//     an empty body or a null body is an empty message;
//   - integers may be quoted ("5", as protojson writes int64) and written in
//     any exact form (2.0, 1e3); floats may be quoted, or "NaN", "Infinity",
//     "-Infinity"; a quoted number is exactly one JSON number, no spaces;
//   - a field given twice (by either name), two members of one oneof, or a
//     map or Struct key given twice is refused, as protojson refuses them;
//   - timestamps are RFC 3339 with at most nanoseconds, years 1 to 9999;
//   - invalid UTF-8 and unpaired UTF-16 surrogate escapes in strings become
//     U+FFFD rather than failing the request;
//   - nesting deeper than 64 levels is refused, in unknown fields too;
//   - UnmarshalOptions.Required names top-level fields that must be present
//     and not null, the check proto3 cannot make;
//   - every failure is a *DecodeError whose text is safe to show the caller
//     and names the field ("context.severity: expected a number") or the
//     syntax error and its byte offset; an error reading the body (over its
//     size limit) is returned as the reader gave it.
//
// Other google.protobuf types than Timestamp, Struct, Value and ListValue
// (none is in the API) are read and written as protojson does.
//
// FuzzUnmarshal checks the reader against protojson on every API message
// without enums; the intentional differences above are listed there.
package apijson
