// The app's tests: they reach the running app at APP_URL (test mode sets it).
package main

import (
	"encoding/json"
	"net/http"
	"os"
	"testing"
)

func get(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	base := os.Getenv("APP_URL")
	if base == "" {
		base = "http://127.0.0.1:8080"
	}
	res, err := http.Get(base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, body
}

func TestHealth(t *testing.T) {
	if status, body := get(t, "/"); status != 200 || body["status"] != "ok" {
		t.Errorf("GET / = %d %v", status, body)
	}
}

func TestAdd(t *testing.T) {
	if _, body := get(t, "/add?a=2&b=3"); body["sum"] != 5.0 {
		t.Errorf("sum = %v, want 5", body["sum"])
	}
}

func TestAddRefusesWords(t *testing.T) {
	if status, _ := get(t, "/add?a=two&b=3"); status != 400 {
		t.Errorf("status = %d, want 400", status)
	}
}
