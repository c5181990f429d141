// A small web app: GET / answers {"status":"ok"}, GET /add?a=1&b=2 answers {"sum":3}.
// Test mode starts it with PORT set to the `app.port` of the request.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
	"strconv"
)

func send(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		send(w, 200, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /add", func(w http.ResponseWriter, r *http.Request) {
		a, errA := strconv.Atoi(r.URL.Query().Get("a"))
		b, errB := strconv.Atoi(r.URL.Query().Get("b"))
		if errA != nil || errB != nil {
			send(w, 400, map[string]string{"error": "a and b must be integers"})
			return
		}
		send(w, 200, map[string]int{"sum": a + b})
	})
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	log.Printf("listening on port %s", port)
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, mux))
}
