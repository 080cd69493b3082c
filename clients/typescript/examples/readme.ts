// The README's examples, type-checked by make lint (never run): if the
// client's types change, the documentation fails to compile here. Lines
// marked to expect an error are bodies the types must refuse.
import { WalletClient, WalletError } from '../src/index.ts';

declare const SERVICE_TOKEN: string;
declare const messages: { role: string; content: string }[];
declare const llm: {
  chat(request: { model: string; max_tokens: number; messages: typeof messages }): Promise<{
    text: string;
    usage: { prompt_tokens: number; completion_tokens: number };
  }>;
};

export async function readmeExample(): Promise<void> {
  const wallet = new WalletClient({ baseUrl: 'http://127.0.0.1:8787', org: 'acme', token: SERVICE_TOKEN });
  const model = 'gpt-4o-mini', usageEstimate = { model, input_tokens: 1200, max_output_tokens: 800 };
  const hold = await wallet.withHold({ feature: 'chat', usageEstimate }, async () => { const r = await llm.chat({ model, max_tokens: 800, messages });
    return { model, input_tokens: r.usage.prompt_tokens, output_tokens: r.usage.completion_tokens }; }); // hold.entry: the capture
  const rateId: string | undefined = hold.entry?.usage?.rate_id;
  const unbilled: string | undefined = hold.entry?.unbilled;
  void [rateId, unbilled];
}

export async function errorsExample(wallet: WalletClient): Promise<string | undefined> {
  try {
    await wallet.debit({ feature: 'chat', amount: '2' });
  } catch (err) {
    if (err instanceof WalletError && err.code === 'insufficient_credits') return err.details.available;
    if (err instanceof WalletError && err.code === 'daily_cap_reached') return err.details.resumes_at;
    throw err;
  }
  return undefined;
}

export async function refusedByTheTypes(wallet: WalletClient): Promise<void> {
  const usage = { model: 'gpt-4o', input_tokens: 1, output_tokens: 1 };
  // @ts-expect-error amount and usage together (the API answers 422)
  await wallet.debit({ feature: 'chat', amount: '2', usage });
  // @ts-expect-error credits are decimal strings, never numbers
  await wallet.debit({ feature: 'chat', amount: 2 });
  // @ts-expect-error a hold needs usageEstimate or amount
  await wallet.withHold({ feature: 'chat' }, async () => ({ amount: '1' }));
  // @ts-expect-error the call returns what it used
  await wallet.withHold({ feature: 'chat', amount: '1' }, async () => 'done');
  // @ts-expect-error not an error code of the API
  if (new WalletError('network_error', 0, 'x').code === 'insufficent_credits') return;
}
