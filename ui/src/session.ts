// The admin token lives in this tab's memory only: never in localStorage, sessionStorage or a
// cookie, so that nothing of it outlives the page (a reload asks for it again).
let token: string | null = null;

export function currentToken(): string | null {
  return token;
}

export function signIn(value: string): void {
  token = value;
}

export function signOut(): void {
  token = null;
}
