package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// child is one running component.
type child struct {
	name string
	log  string
	cmd  *exec.Cmd
	// done is closed when the process has exited; err is then its exit error.
	done chan struct{}
	err  error
}

// supervisor starts components and stops them together.
type supervisor struct {
	children []*child
	// exited receives each child that exits, whatever the reason.
	exited chan *child
}

func newSupervisor() *supervisor {
	return &supervisor{exited: make(chan *child, 8)}
}

// start runs path with args, its stdout and stderr appended to logPath. The child gets
// SIGKILL if this process dies without stopping it (see childAttr).
//
// It must be called from the main goroutine: main locks it to the main thread, and the
// parent-death signal follows the thread that forked, not the process.
func (s *supervisor) start(name, path string, args []string, logPath string) (*child, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.Env = childEnv(os.Environ())
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	s.children = append(s.children, c)
	go func() {
		c.err = cmd.Wait()
		log.Close()
		close(c.done)
		s.exited <- c
	}()
	return c, nil
}

// childEnv is the environment without what would change a component's configuration
// behind its flags: etcd reads every ETCD_* variable as a flag, and client-go reads
// KUBECONFIG.
func childEnv(env []string) []string {
	var kept []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "ETCD_") || strings.HasPrefix(kv, "KUBECONFIG=") {
			continue
		}
		kept = append(kept, kv)
	}
	return kept
}

// stop sends SIGTERM to every child still running, waits up to grace for them, then
// kills what is left and waits for it.
func (s *supervisor) stop(grace time.Duration) {
	for _, c := range s.children {
		if !c.exitedYet() {
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.After(grace)
	for _, c := range s.children {
		select {
		case <-c.done:
		case <-deadline:
		}
	}
	for _, c := range s.children {
		if !c.exitedYet() {
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
}

func (c *child) exitedYet() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// failure describes a child that exited: its status and the end of its log.
func (c *child) failure() error {
	status := "exited"
	if c.err != nil {
		status = c.err.Error()
	}
	return fmt.Errorf("%s stopped (%s); the end of %s:\n%s", c.name, status, c.log, tail(c.log, 25))
}

// tail is the last n lines of the file at path (or why it cannot be read).
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logMentions tells whether the log at path contains needle.
func logMentions(path, needle string) bool {
	data, err := os.ReadFile(path)
	return err == nil && bytes.Contains(data, []byte(needle))
}

// stopSignal is closed at the first reason to stop: stdin closed (the parent is gone,
// or let go), ttl passed, or a signal.
func stopSignal(stdin io.Reader, ttl <-chan time.Time, signals <-chan os.Signal) <-chan struct{} {
	stop := make(chan struct{})
	closed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(closed)
	}()
	go func() {
		select {
		case <-closed:
		case <-ttl:
		case <-signals:
		}
		close(stop)
	}()
	return stop
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// errAddressInUse marks a start that lost a port to another process between choosing
// it and binding it; another attempt picks other ports.
var errAddressInUse = errors.New("address already in use")
