// Package cmdline parses the kernel command line the way the kernel does.
// PID 1 reads /proc/cmdline once (init/boot) and hands the parsed result
// to every step that needs a kiln.* key (configs/image names them).
package cmdline

import (
	"os"
	"strings"
)

// Param is one kernel command line parameter.
type Param struct {
	Key   string
	Value string
	// HasValue tells "key=" (empty value) from "key".
	HasValue bool
}

// Cmdline is a parsed kernel command line.
type Cmdline struct {
	Params []Param
}

// Read reads and parses a command line file (/proc/cmdline).
func Read(path string) (Cmdline, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Cmdline{}, err
	}
	return Parse(string(b)), nil
}

// Parse splits a kernel command line the way the kernel does: words are
// separated by spaces outside double quotes; a quote may surround a whole
// word ("key=a b") or a value (key="a b"), and the quotes are not part of
// the key or value. The "--" separator is skipped.
func Parse(s string) Cmdline {
	var c Cmdline
	for _, w := range splitQuoted(s) {
		if w == "--" {
			continue
		}
		c.Params = append(c.Params, parseParam(w))
	}
	return c
}

// splitQuoted splits s at white space outside double quotes; quotes are
// kept.
func splitQuoted(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
			cur.WriteRune(r)
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			inWord = true
			cur.WriteRune(r)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// parseParam splits one word into key and value and removes the quotes
// like the kernel's next_arg: a leading quote of the word and its closing
// quote at the end, or the quotes around the value.
func parseParam(w string) Param {
	quoted := strings.HasPrefix(w, `"`)
	if quoted {
		w = w[1:]
	}
	eq := strings.IndexByte(w, '=')
	if eq < 0 {
		if quoted {
			w = strings.TrimSuffix(w, `"`)
		}
		return Param{Key: w}
	}
	key, val := w[:eq], w[eq+1:]
	if strings.HasPrefix(val, `"`) {
		val = strings.TrimSuffix(val[1:], `"`)
	} else if quoted {
		val = strings.TrimSuffix(val, `"`)
	}
	return Param{Key: key, Value: val, HasValue: true}
}

// Get returns the value of the last occurrence of key.
func (c Cmdline) Get(key string) (string, bool) {
	for i := len(c.Params) - 1; i >= 0; i-- {
		if c.Params[i].Key == key {
			return c.Params[i].Value, true
		}
	}
	return "", false
}

// Has reports whether key occurs at all, with or without a value (a flag
// such as kiln.verbose).
func (c Cmdline) Has(key string) bool {
	_, ok := c.Get(key)
	return ok
}
