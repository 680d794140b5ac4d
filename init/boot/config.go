package boot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"kiln/configs/image"
	"kiln/configs/node"
	"kiln/init/boot/blkdev"
	"kiln/init/boot/cmdline"
	"kiln/init/boot/console"
	"kiln/internal/bounded"
)

// configLayer is one config document and where it came from.
type configLayer struct {
	Source string // for messages: "/etc/kiln/config.yaml", "kiln.config=http://..."
	Data   []byte
}

// configStack is the node config's sources, in precedence order (later
// overrides earlier): the embedded file, a config drive, kiln.config=; then
// kiln.role= and kiln.hostname= from the kernel command line.
type configStack struct {
	layers    []configLayer
	overrides []cmdline.Param
}

// resolve stacks the layers over the defaults, then the overrides. Each
// step is validated, and an error names the source that broke it.
func (s *configStack) resolve() (node.Config, error) {
	cfg := node.Default()
	for _, l := range s.layers {
		next, err := node.Overlay(cfg, l.Data)
		if err != nil {
			return node.Config{}, fmt.Errorf("config %s: %w", l.Source, err)
		}
		cfg = next
	}
	for _, p := range s.overrides {
		switch p.Key {
		case image.ParamRole:
			cfg.Role = node.Role(p.Value)
		case image.ParamHostname:
			cfg.Hostname = p.Value
		case image.ParamStateDisk:
			cfg.Storage.StateDisk = p.Value
		}
		if err := cfg.Validate(); err != nil {
			return node.Config{}, fmt.Errorf("config %s=%s: %w", p.Key, bounded.Cut(p.Value), err)
		}
	}
	return cfg, nil
}

// sources lists what was applied, for the console.
func (s *configStack) sources() []string {
	var out []string
	for _, l := range s.layers {
		out = append(out, l.Source)
	}
	for _, p := range s.overrides {
		out = append(out, p.Key+"="+p.Value)
	}
	if len(out) == 0 {
		return []string{"defaults"}
	}
	return out
}

// addressSet reports whether a source chose the node's address (otherwise
// PID 1 uses the one the network gives).
func (s *configStack) addressSet() bool {
	for _, l := range s.layers {
		if node.SetsField(l.Data, "address") {
			return true
		}
	}
	return false
}

// add appends a layer (the remote config once the network is up).
func (s *configStack) add(source string, data []byte) {
	s.layers = append(s.layers, configLayer{Source: source, Data: data})
}

// configInputs are where localConfig looks.
type configInputs struct {
	Embedded string                           // image.ConfigFile
	ReadFile func(string) ([]byte, error)     // node.ReadFile (capped at node.MaxFileSize)
	Drive    func() (string, []byte, error)   // a config drive's source and config; "" when there is none
	Cmdline  cmdline.Cmdline                  // the kernel command line
	Warn     func(format string, args ...any) // may be nil
}

// isRemote reports whether a kiln.config= value is fetched over HTTP.
func isRemote(v string) bool { return hasScheme(v, "http") }

func hasScheme(v, scheme string) bool {
	return len(v) > len(scheme)+3 && strings.EqualFold(v[:len(scheme)+3], scheme+"://")
}

// checkRemote refuses a kiln.config= URL that can never be fetched, before
// the boot waits for it: https (the node fetches its config over plain
// HTTP only: a config server's certificate would be a private CA's, which
// the node cannot know before it has its config) and a URL that does not
// parse or names no host.
func checkRemote(v string) error {
	if hasScheme(v, "https") {
		return errors.New("https is not supported: the node fetches kiln.config= over plain HTTP only; use http:// (kiln.config= gives no integrity either way: serve the config only on a network you trust)")
	}
	if !isRemote(v) {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil {
		return fmt.Errorf("not a URL: %w", errors.Unwrap(err))
	}
	if u.Host == "" || u.Hostname() == "" {
		return errors.New("not a URL: no host (want http://HOST[:PORT]/PATH)")
	}
	return nil
}

// localConfig gathers the sources that need no network: the embedded
// config (optional), a config drive, kiln.config=PATH, and the command line
// overrides. It also returns kiln.config's URL when it is remote: the
// caller fetches it once the network is up and adds it to the stack
// (before the overrides, which stay last).
func localConfig(in configInputs) (*configStack, string, error) {
	s := &configStack{}
	read := in.ReadFile
	if read == nil {
		read = node.ReadFile
	}
	if in.Embedded != "" {
		data, err := read(in.Embedded)
		switch {
		case err == nil:
			s.add(in.Embedded, data)
		case errors.Is(err, os.ErrNotExist):
		default:
			return nil, "", fmt.Errorf("config %s: %w", in.Embedded, err)
		}
	}
	if in.Drive != nil {
		src, data, err := in.Drive()
		if err != nil {
			return nil, "", err
		}
		if src != "" {
			s.add(src, data)
		}
	}
	remote := ""
	if v, ok := in.Cmdline.Get(image.ParamConfig); ok {
		src := image.Arg(image.ParamConfig, v)
		switch {
		case v == "":
			return nil, "", fmt.Errorf("config %s: empty (want a path in the image or an http:// URL)", src)
		case isRemote(v) || hasScheme(v, "https"):
			if err := checkRemote(v); err != nil {
				return nil, "", fmt.Errorf("config %s: %w", src, err)
			}
			remote = v
		default:
			data, err := read(v)
			if err != nil {
				return nil, "", fmt.Errorf("config %s: %w", src, unwrapPath(err))
			}
			s.add(src, data)
		}
	}
	for _, p := range in.Cmdline.Params {
		if p.Key == image.ParamRole || p.Key == image.ParamHostname || p.Key == image.ParamStateDisk {
			s.overrides = append(s.overrides, p)
		}
	}
	return s, remote, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s %s: %w", pe.Op, pe.Path, pe.Err)
	}
	return err
}

// readConfigDrive looks for a block device labelled image.ConfigDriveLabel,
// mounts it read-only on mnt and reads its image.ConfigDriveFile.
func readConfigDrive(devs []blkdev.Device, mnt string, warn func(string, ...any)) (string, []byte, error) {
	found := blkdev.FindByLabel(devs, image.ConfigDriveLabel)
	if len(found) == 0 {
		return "", nil, nil
	}
	d := found[0]
	if len(found) > 1 && warn != nil {
		var names []string
		for _, f := range found {
			names = append(names, f.Path)
		}
		warn("several config drives (%s): using %s", strings.Join(names, ", "), d.Path)
	}
	src := fmt.Sprintf("config drive %s", d.Path)
	p, err := blkdev.ProbeDevice(d.Path)
	if err != nil {
		return "", nil, fmt.Errorf("config %s: %w", src, err)
	}
	if p.MountType() == "" {
		return "", nil, fmt.Errorf("config %s: %s cannot be mounted (want FAT, ISO 9660 or ext4)", src, p)
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return "", nil, err
	}
	if err := unix.Mount(d.Path, mnt, p.MountType(), unix.MS_RDONLY|all, ""); err != nil {
		return "", nil, fmt.Errorf("config %s: mount %s: %w (is the %s module in %s?)", src, p.MountType(), err, p.MountType(), image.ModulesFile)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	data, err := node.ReadFile(filepath.Join(mnt, image.ConfigDriveFile))
	if err != nil {
		return "", nil, fmt.Errorf("config %s: no %s on it: %w", src, image.ConfigDriveFile, unwrapPath(err))
	}
	return src + "/" + image.ConfigDriveFile, data, nil
}

// fetchConfig gets a config over HTTP, retrying (1 s doubling to 30 s)
// until it gets an answer or ctx ends: a PXE-booted node without its config
// has nothing else to do, and the server may come up later. Each failure is
// printed.
func fetchConfig(ctx context.Context, url string, con *console.Console) ([]byte, error) {
	client := &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{Proxy: nil, ResponseHeaderTimeout: 15 * time.Second},
	}
	delay := fetchRetryBase
	for attempt := 1; ; attempt++ {
		data, err := fetchOnce(ctx, client, url)
		if err == nil {
			return data, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		con.Warn("config %s=%s: attempt %d: %v; retrying in %s", image.ParamConfig, url, attempt, err, delay)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// fetchRetryBase is the first delay between attempts (tests shorten it).
var fetchRetryBase = time.Second

// maxConfigSize bounds a fetched config, as a config file.
const maxConfigSize = node.MaxFileSize

func fetchOnce(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxConfigSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigSize {
		return nil, &bounded.TooLargeError{Max: maxConfigSize}
	}
	return data, nil
}
