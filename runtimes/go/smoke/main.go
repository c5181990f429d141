// Petri smoke test: prove the toolchain compiles and runs and both output streams work.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Printf("petri smoke ok: go %s\n", runtime.Version())
	fmt.Fprintln(os.Stderr, "petri smoke: stderr works")
}
