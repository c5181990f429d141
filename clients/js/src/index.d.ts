// Types of Petri's JavaScript client (src/index.js).

export type Language = "python" | "node" | "go" | "java";

export interface ClientOptions {
  /** The gateway; default PETRI_URL, else http://127.0.0.1:8000. */
  url?: string;
  /** An API key, sent as `Authorization: Bearer`; default PETRI_API_KEY. */
  apiKey?: string | null;
  /** Milliseconds for each ordinary call (never a run). Default 30 000. */
  timeout?: number;
  /** Milliseconds without a byte (keep-alives included) before a stream is resumed. */
  stallTimeout?: number;
  /** Milliseconds of failed reconnects before a stream gives up. Default 60 000. */
  reconnectFor?: number;
  fetch?: typeof fetch;
}

export interface CreateOptions extends ClientOptions {
  /** Seconds the sandbox lives after its last use. */
  ttl?: number;
  env?: Record<string, string>;
  limits?: { memory_mb?: number; cpus?: number; pids?: number; disk_mb?: number };
  client?: Client;
}

export interface SandboxInfo {
  id: string;
  language: string;
  status: string;
  created_at: string;
  last_active_at: string;
  expires_at: string;
  ttl_seconds: number;
  limits: Record<string, number>;
  env: string[];
  [more: string]: unknown;
}

export interface FileInfo {
  path: string;
  size: number;
  modified_at?: string;
}

export interface App {
  command: string;
  port: number;
  readyPath?: string;
  /** Seconds. */
  readyTimeout?: number;
}

export interface RunOptions {
  args?: Array<string | number>;
  /** Seconds for the whole run, install included (the gateway's deadline, not the client's). */
  timeout?: number;
  idleTimeout?: number;
  env?: Record<string, string>;
  stdin?: string;
  app?: App;
  onStdout?: (text: string) => unknown;
  onStderr?: (text: string) => unknown;
  onInstall?: (text: string) => unknown;
  onEvent?: (event: PetriEvent) => unknown;
}

export type EventType =
  | "start" | "install" | "stdout" | "stderr" | "truncated" | "app" | "ready" | "report"
  | "exit" | "error";

export interface PetriEvent {
  id: number;
  type: EventType;
  data: Record<string, any>;
  terminal: boolean;
}

export interface TestReport {
  runner: string | null;
  passed: number | null;
  failed: number | null;
  skipped: number | null;
  errors: number | null;
  duration_ms?: number;
  cases?: Array<{ name: string; suite: string; status: string; duration_ms: number | null;
    message?: string }> | null;
  message?: string;
}

export interface Execution {
  id: string;
  sandboxId: string;
  stdout: string;
  stderr: string;
  exitCode: number | null;
  status: "exited" | "killed" | "timed_out" | "failed" | "interrupted" | "running";
  timedOut: boolean;
  oomKilled: boolean;
  killed: boolean;
  truncated: boolean;
  signal: string | null;
  durationMs: number | null;
  install: string;
  appOutput: string;
  missingModules: string[];
  tests: TestReport | null;
  error: { code: string; message: string } | null;
  ok: boolean;
}

export interface StreamOptions extends Omit<RunOptions, "onStdout" | "onStderr" | "onInstall" | "onEvent"> {
  code?: string;
  command?: string;
  file?: string;
  test?: boolean;
  executionId?: string;
  after?: number;
}

export class PetriError extends Error {
  status: number;
  code: string;
  constructor(message: string, options?: { status?: number; code?: string });
}
export class InvalidRequest extends PetriError {}
export class Unauthorized extends PetriError {}
export class NotFound extends PetriError {}
export class SandboxNotFound extends NotFound {}
export class ExecutionNotFound extends NotFound {}
export class FileNotFound extends NotFound {}
export class Conflict extends PetriError {}
export class Expired extends PetriError {}
export class TooLarge extends PetriError {}
export class QuotaExceeded extends PetriError {
  retryAfter: number | null;
}
export class GatewayError extends PetriError {}
export class GatewayUnavailable extends PetriError {}
export class RequestTimeout extends PetriError {}
export class ExecutionFailed extends PetriError {
  execution: Execution;
}
export class InstallFailed extends ExecutionFailed {}

export class Client {
  url: string;
  apiKey: string | null;
  timeout: number;
  stallTimeout: number;
  reconnectFor: number;
  constructor(options?: ClientOptions);
  request(method: string, path: string, options?: { json?: unknown; body?: BodyInit;
    headers?: Record<string, string> }): Promise<Response>;
  json(method: string, path: string, options?: { json?: unknown; body?: BodyInit;
    headers?: Record<string, string> }): Promise<any>;
  events(sandboxId: string, options: { body?: Record<string, unknown>; executionId?: string;
    after?: number }): AsyncGenerator<PetriEvent, void, undefined>;
}

export interface Files {
  write(path: string, content: string | Uint8Array | Blob): Promise<FileInfo>;
  read(path: string): Promise<string>;
  readBytes(path: string): Promise<Uint8Array>;
  list(path?: string): Promise<FileInfo[]>;
  remove(path: string): Promise<void>;
  uploadZip(zip: Uint8Array | Blob): Promise<string[]>;
}

export class Sandbox {
  readonly id: string;
  readonly language: string;
  info: SandboxInfo;
  readonly client: Client;
  readonly files: Files;
  static create(language?: Language, options?: CreateOptions): Promise<Sandbox>;
  static use<T>(language: Language, options: CreateOptions, fn: (sb: Sandbox) => Promise<T>): Promise<T>;
  static connect(sandboxId: string, options?: ClientOptions & { client?: Client }): Promise<Sandbox>;
  static list(options?: ClientOptions & { client?: Client }): Promise<SandboxInfo[]>;
  getInfo(): Promise<SandboxInfo>;
  delete(): Promise<void>;
  runCode(code: string, options?: RunOptions): Promise<Execution>;
  runCommand(command: string, options?: RunOptions): Promise<Execution>;
  runFile(path: string, options?: RunOptions): Promise<Execution>;
  runTests(path?: string | null, options?: RunOptions): Promise<Execution>;
  stream(options: StreamOptions): AsyncGenerator<PetriEvent, void, undefined>;
  kill(executionId: string): Promise<Record<string, unknown>>;
  executions(): Promise<Array<Record<string, unknown>>>;
}

export function readSSE(body: ReadableStream<Uint8Array>): AsyncGenerator<{ id: string; type: string; data: string }>;
export function parseEvent(raw: { id: string; type: string; data: string }, after?: number): PetriEvent | null;
