package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   uint16 = 1
	opWRQ   uint16 = 2
	opDATA  uint16 = 3
	opACK   uint16 = 4
	opERROR uint16 = 5
	opOACK  uint16 = 6
)

// Error codes (RFC 1350, RFC 2347).
const (
	ErrUndefined      uint16 = 0
	ErrFileNotFound   uint16 = 1
	ErrAccess         uint16 = 2
	ErrDiskFull       uint16 = 3
	ErrIllegalOp      uint16 = 4
	ErrUnknownTID     uint16 = 5
	ErrFileExists     uint16 = 6
	ErrNoSuchUser     uint16 = 7
	ErrOptionRefused  uint16 = 8
	maxRequestOptions        = 16
)

// Block sizes (RFC 1350, RFC 2348).
const (
	DefaultBlockSize = 512
	MinBlockSize     = 8
	MaxBlockSize     = 65464
)

// request is a parsed read or write request.
type request struct {
	op       uint16
	filename string
	mode     string // lower case
	// options in the order the client sent them, names lower case.
	options []option
}

type option struct{ name, value string }

// errMalformed is the reason a request does not parse.
var errMalformed = errors.New("malformed request")

// parseRequest parses an RRQ or WRQ: opcode, then NUL-terminated
// filename, mode and option name/value pairs.
func parseRequest(b []byte) (request, error) {
	if len(b) < 2 {
		return request{}, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}
	r := request{op: binary.BigEndian.Uint16(b)}
	if r.op != opRRQ && r.op != opWRQ {
		return r, fmt.Errorf("%w: opcode %d is not a request", errMalformed, r.op)
	}
	rest := b[2:]
	if len(rest) == 0 || rest[len(rest)-1] != 0 {
		return r, fmt.Errorf("%w: fields are not NUL-terminated", errMalformed)
	}
	fields := strings.Split(string(rest[:len(rest)-1]), "\x00")
	if len(fields) < 2 {
		return r, fmt.Errorf("%w: no transfer mode", errMalformed)
	}
	r.filename, r.mode = fields[0], strings.ToLower(fields[1])
	if r.filename == "" {
		return r, fmt.Errorf("%w: empty file name", errMalformed)
	}
	if r.mode == "" {
		return r, fmt.Errorf("%w: empty transfer mode", errMalformed)
	}
	opts := fields[2:]
	if len(opts)%2 != 0 {
		// Some clients pad the request with a trailing NUL: tolerate
		// one empty field at the end.
		if opts[len(opts)-1] != "" {
			return r, fmt.Errorf("%w: option %q has no value", errMalformed, opts[len(opts)-1])
		}
		opts = opts[:len(opts)-1]
	}
	if len(opts)/2 > maxRequestOptions {
		return r, fmt.Errorf("%w: %d options", errMalformed, len(opts)/2)
	}
	for i := 0; i < len(opts); i += 2 {
		r.options = append(r.options, option{strings.ToLower(opts[i]), opts[i+1]})
	}
	return r, nil
}

func dataPacket(buf []byte, block uint16, n int) []byte {
	binary.BigEndian.PutUint16(buf[0:], opDATA)
	binary.BigEndian.PutUint16(buf[2:], block)
	return buf[:4+n]
}

func oackPacket(opts []option) []byte {
	var b bytes.Buffer
	b.Write([]byte{0, byte(opOACK)})
	for _, o := range opts {
		b.WriteString(o.name)
		b.WriteByte(0)
		b.WriteString(o.value)
		b.WriteByte(0)
	}
	return b.Bytes()
}

func errorPacket(code uint16, msg string) []byte {
	b := make([]byte, 4, 5+len(msg))
	binary.BigEndian.PutUint16(b[0:], opERROR)
	binary.BigEndian.PutUint16(b[2:], code)
	b = append(b, msg...)
	return append(b, 0)
}

// parseAck returns the block number of an ACK, or, for an ERROR, a
// *RemoteError.
func parseReply(b []byte) (op uint16, block uint16, err error) {
	if len(b) < 4 {
		return 0, 0, fmt.Errorf("%d-byte packet", len(b))
	}
	op = binary.BigEndian.Uint16(b)
	switch op {
	case opACK:
		return op, binary.BigEndian.Uint16(b[2:]), nil
	case opERROR:
		msg := b[4:]
		if i := bytes.IndexByte(msg, 0); i >= 0 {
			msg = msg[:i]
		}
		return op, 0, &RemoteError{Code: binary.BigEndian.Uint16(b[2:]), Message: string(msg)}
	}
	return op, 0, fmt.Errorf("unexpected opcode %d", op)
}

// RemoteError is an ERROR packet the client sent, ending the transfer.
type RemoteError struct {
	Code    uint16
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("client sent error %d: %q", e.Code, e.Message)
}

// Error is an error the server sent to the client.
type Error struct {
	Code    uint16
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("error %d: %s", e.Code, e.Message)
}
