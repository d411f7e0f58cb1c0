%%--------------------------------------------------------------------
%% EMQX API double: emqx_alarm:activate/3 (ok | {error, already_existed}),
%% ensure_deactivated/1, get_alarms/1.
%%--------------------------------------------------------------------
-module(emqx_alarm).

-export([activate/3, ensure_deactivated/1, get_alarms/1, history/0]).

-define(KEY(Name), {?MODULE, active, Name}).
-define(HISTORY, {?MODULE, history}).

activate(Name, Details, Message) ->
    case persistent_term:get(?KEY(Name), undefined) of
        undefined ->
            persistent_term:put(?KEY(Name), #{name => Name, details => Details, message => Message}),
            record({activated, Name}),
            ok;
        _ ->
            {error, already_existed}
    end.

ensure_deactivated(Name) ->
    case persistent_term:erase(?KEY(Name)) of
        true -> record({deactivated, Name});
        false -> ok
    end,
    ok.

get_alarms(activated) ->
    [A || {?KEY(_), A} <- persistent_term:get()].

%% @doc Every activation and deactivation, oldest first.
history() ->
    lists:reverse(persistent_term:get(?HISTORY, [])).

record(Event) ->
    persistent_term:put(?HISTORY, [Event | persistent_term:get(?HISTORY, [])]).
