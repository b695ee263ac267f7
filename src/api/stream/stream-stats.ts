/** Counters for tests and metrics: connections open and currently paused, pauses so far, overload refusals so far. */
export const streamStats = { open: 0, paused: 0, pausesTotal: 0, overloaded: 0 };
