package apijson

import (
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// enumNames caches the JSON names of one enum's values.
type enumNames struct {
	byNumber map[protoreflect.EnumNumber]string
	byName   map[string]protoreflect.EnumNumber // lowercase short and full names
	list     string                             // "reflect, advise, ..." (UNSPECIFIED left out)
}

var enumCache sync.Map // protoreflect.FullName -> *enumNames

func enumNamesOf(ed protoreflect.EnumDescriptor) *enumNames {
	if v, ok := enumCache.Load(ed.FullName()); ok {
		return v.(*enumNames)
	}
	prefix := enumPrefix(string(ed.Name()))
	values := ed.Values()
	en := &enumNames{
		byNumber: make(map[protoreflect.EnumNumber]string, values.Len()),
		byName:   make(map[string]protoreflect.EnumNumber, 2*values.Len()),
	}
	var listed []string
	for i := 0; i < values.Len(); i++ {
		vd := values.Get(i)
		full := string(vd.Name())
		short := strings.ToLower(strings.TrimPrefix(full, prefix))
		if _, dup := en.byNumber[vd.Number()]; !dup {
			en.byNumber[vd.Number()] = short
		}
		en.byName[short] = vd.Number()
		en.byName[strings.ToLower(full)] = vd.Number()
		if vd.Number() != 0 {
			listed = append(listed, short)
		}
	}
	en.list = strings.Join(listed, ", ")
	v, _ := enumCache.LoadOrStore(ed.FullName(), en)
	return v.(*enumNames)
}

// enumPrefix turns an enum type name into its values' prefix:
// SessionStatus -> SESSION_STATUS_.
func enumPrefix(name string) string { return strings.ToUpper(SnakeCase(name)) + "_" }

// EnumString is the API JSON name of an enum value ("reflect"), or "" for an
// unknown number.
func EnumString(e protoreflect.Enum) string {
	return enumNamesOf(e.Descriptor()).byNumber[e.Number()]
}

// ParseEnum reads an enum value by its API name, case-insensitively, with or
// without the type prefix. ok is false when nothing matches.
func ParseEnum(ed protoreflect.EnumDescriptor, s string) (protoreflect.EnumNumber, bool) {
	n, ok := enumNamesOf(ed).byName[strings.ToLower(strings.TrimSpace(s))]
	return n, ok
}

// EnumValues lists the API names of an enum's values, the zero value left out.
func EnumValues(ed protoreflect.EnumDescriptor) string {
	return enumNamesOf(ed).list
}
