/**
 * The errors withPrompt() and compile() raise, under one base class (mirrors promptstamp's
 * Python `_errors.py`). Each carries the prompt name and label; fetch errors carry the class
 * name of the Langfuse client's error (`errorType`), also recorded on the active span.
 */

export class PromptError extends Error {
  constructor(
    message: string,
    readonly promptName: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Langfuse says the prompt, or the label on it, does not exist (HTTP 404): fail closed. */
export class PromptNotFoundError extends PromptError {
  constructor(
    promptName: string,
    readonly label: string,
    readonly errorType = "NotFoundError",
    detail = "",
  ) {
    const message = `prompt ${JSON.stringify(promptName)} has no version labelled ${JSON.stringify(label)}`;
    super(detail ? `${message} (${detail})` : message, promptName);
  }
}

/** The fetch failed (timeout, connection error, 5xx) and nothing young enough is cached. */
export class PromptUnavailableError extends PromptError {
  constructor(
    promptName: string,
    readonly label: string,
    readonly errorType: string,
    readonly staleSeconds?: number,
  ) {
    const why =
      staleSeconds === undefined
        ? "nothing cached"
        : `the last known good copy is ${staleSeconds.toFixed(0)} s old, too old to serve`;
    super(
      `prompt ${JSON.stringify(promptName)} (label ${JSON.stringify(label)}) is unavailable: ` +
        `fetch failed with ${errorType} and ${why}`,
      promptName,
    );
  }
}

/** compile() was not given every variable (or chat placeholder) the template needs. */
export class PromptVariableError extends PromptError {
  constructor(
    promptName: string,
    readonly missing: readonly string[],
  ) {
    super(
      `prompt ${JSON.stringify(promptName)} needs variables that were not given: ${missing.join(", ")}`,
      promptName,
    );
  }
}
