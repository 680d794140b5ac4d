package pxe

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
)

// Per-machine node secrets
//
// A node name is bound to the machine that first joined with it, by a key
// derived from the machine's nodeSecret (see components/approve). A
// diskless machine keeps nothing across a reboot, so the server gives it
// the same nodeSecret in its node config at every boot: the one its entry
// in the machines file names (nodeSecret:), or else
//
//	hex(HMAC-SHA256(key, MAC))
//
// with MAC in its canonical form (52:54:00:12:34:56, lower case) and key
// the server's secrets key, a file of SecretsKeySize random bytes made at
// the first start and kept across restarts. Deleting or replacing that
// file changes every derived secret: the machines cannot rejoin under
// their names until an administrator frees them (approve.FreeNameHint).
// A node config goes only to its own machine (see the package doc), and
// no secret is ever logged.

// SecretsKeySize is the size of a new secrets key, and the least a key
// file may hold.
const SecretsKeySize = 32

// maxSecretsKeySize bounds what is read from a key file.
const maxSecretsKeySize = 4096

// DefaultSecretsKeyFile is the secrets key's file name in its default
// directory (see DefaultSecretsKeyPath).
const DefaultSecretsKeyFile = "pxe-secrets.key"

// SecretsKey is the server's key for the machines' derived node secrets.
// It prints as its file name, never as its bytes.
type SecretsKey struct {
	// Path is the key's file ("" for a key given in memory).
	Path string
	// Created is true when LoadSecretsKey made the file.
	Created bool
	key     []byte
}

// NewSecretsKey wraps key bytes (at least SecretsKeySize of them).
func NewSecretsKey(key []byte) (*SecretsKey, error) {
	if len(key) < SecretsKeySize {
		return nil, fmt.Errorf("secrets key: %d bytes, want at least %d", len(key), SecretsKeySize)
	}
	return &SecretsKey{key: append([]byte(nil), key...)}, nil
}

// String names the key without its bytes.
func (k *SecretsKey) String() string {
	if k == nil {
		return "(no secrets key)"
	}
	if k.Path == "" {
		return "(secrets key)"
	}
	return "secrets key " + k.Path
}

// GoString keeps %#v from printing the key.
func (k *SecretsKey) GoString() string { return k.String() }

// LogValue keeps slog from printing the key.
func (k *SecretsKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// NodeSecret is the secret derived for the machine with the MAC address:
// hex(HMAC-SHA256(key, canonical MAC)), 64 characters.
func (k *SecretsKey) NodeSecret(mac net.HardwareAddr) string {
	h := hmac.New(sha256.New, k.key)
	h.Write([]byte(mac.String()))
	return hex.EncodeToString(h.Sum(nil))
}

// DefaultSecretsKeyPath is where the secrets key is kept when none is
// named: next to the machines file; without one, in the user's state
// directory ($XDG_STATE_HOME/kiln, or ~/.local/state/kiln).
func DefaultSecretsKeyPath(machinesFile string) (string, error) {
	if machinesFile != "" {
		return filepath.Join(filepath.Dir(machinesFile), DefaultSecretsKeyFile), nil
	}
	dir := os.Getenv("XDG_STATE_HOME")
	if !filepath.IsAbs(dir) {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no place for the secrets key: %w (give --secrets-key FILE)", err)
		}
		dir = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(dir, "kiln", DefaultSecretsKeyFile), nil
}

// LoadSecretsKey reads the secrets key from path, or creates it (mode
// 0600, SecretsKeySize random bytes) if there is none; mkdir creates its
// directory (0700) too. A key file other users may read or write, or one
// shorter than SecretsKeySize, is refused.
func LoadSecretsKey(path string, mkdir bool) (*SecretsKey, error) {
	k, err := readSecretsKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if mkdir {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("secrets key: %w", err)
		}
	}
	switch err := createSecretsKey(path); {
	case errors.Is(err, fs.ErrExist):
		// Made by another server in the meantime: use that one.
		return readSecretsKey(path)
	case err != nil:
		return nil, fmt.Errorf("creating the secrets key: %w", err)
	}
	k, err = readSecretsKey(path)
	if k != nil {
		k.Created = true
	}
	return k, err
}

func readSecretsKey(path string) (*SecretsKey, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secrets key %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secrets key %s is open to other users of this host (mode %04o), and it derives every machine's nodeSecret: chmod 600 %s",
			path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretsKeySize+1))
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	switch {
	case len(b) < SecretsKeySize:
		return nil, fmt.Errorf("secrets key %s holds %d bytes, want at least %d: restore it from a backup "+
			"(or delete it for a new key, which changes every machine's derived nodeSecret: the machines then cannot rejoin under their names until their names are freed)",
			path, len(b), SecretsKeySize)
	case len(b) > maxSecretsKeySize:
		return nil, fmt.Errorf("secrets key %s holds more than %d bytes: is it the right file?", path, maxSecretsKeySize)
	}
	return &SecretsKey{Path: path, key: b}, nil
}

// createSecretsKey writes a new key to path, failing with fs.ErrExist if
// there is a file there.
func createSecretsKey(path string) error {
	key := make([]byte, SecretsKeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// Secret is a node secret from the machines file. It prints as
// "(secret)", never as its value.
type Secret string

// String hides the value.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "(secret)"
}

// GoString hides the value from %#v.
func (s Secret) GoString() string { return `"` + s.String() + `"` }

// LogValue hides the value from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// NodeSecret is the nodeSecret machine m gets: its own from the machines
// file, or the one derived from its MAC address.
func (s *Server) NodeSecret(m Machine) string {
	if m.NodeSecret != "" {
		return string(m.NodeSecret)
	}
	return s.secrets.NodeSecret(m.MAC)
}
