// The list of an owner that holds nothing yet: one array shared by every
// parser, send buffer, queue and link list, so that an idle session keeps
// no empty array of its own (32 bytes each). Frozen: a push into it throws
// instead of reaching another owner; an owner replaces it with an array of
// its own on its first item, and gives that back once it empties.

export const NO_ITEMS: never[] = Object.freeze([]) as unknown as never[];
