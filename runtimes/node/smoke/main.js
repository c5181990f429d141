// Petri smoke test: prove the runtime starts and both output streams work.
console.log(`petri smoke ok: node ${process.version}`);
console.error("petri smoke: stderr works");
