//go:build !linux

package main

import "syscall"

// childAttr: only Linux has a parent-death signal; elsewhere the children are stopped
// by stop() alone.
func childAttr() *syscall.SysProcAttr { return nil }
