%%--------------------------------------------------------------------
%% The EMQX double's emqx_extsub (EMQX 6.1.1+; shared/reference/
%% paced-replay.md section 1), for mode '6.2':
%%
%% - register/2 offers every new subscription to each registered handler
%%   module, in the channel (handle_subscribe(subscribe, Ctx, undefined,
%%   TF) -> {ok, St} | ignore); Ctx's send/send_after reach handle_info/3
%%   through the channel's mailbox;
%% - messages a handler returns go into one buffer per channel, ordered by
%%   a sequence id, and to the session as it has room:
%%   max(10 - unacked, inflight_max - inflight_cnt) at a time; a message the
%%   session cannot take (inflight full, or disconnected) is nacked back
%%   into the buffer under its sequence id, retried after 100 ms or on the
%%   next ack;
%% - demand: desired_message_count is buffer_size (100) while the
%%   handler's delivering count (buffered + unacked) is below it, else 0;
%% - delivery.completed of its message calls handle_delivered/4 ({ok, St} |
%%   {destroy, TFs} | destroy);
%% - destroying a handler drops its messages still in the buffer, as EMQX
%%   does (emqx_extsub_handler_registry: destroy/3 unsubscribes, and the
%%   last topic filter's unsubscribe calls emqx_extsub_buffer:drop_handler/2);
%% - a disconnect saves handle_save_subopts/3's term in the subscription
%%   and ends the handlers (handle_unsubscribe(disconnect, ..),
%%   handle_terminate/1); session.resumed subscribes them again with
%%   `resume' and subopts holding #{Module => Saved}.
%%
%% State lives in the channel's process dictionary, as in EMQX.
%%--------------------------------------------------------------------
-module(emqx_double_extsub).

-export([start/0, register/2, unregister/1]).
-export([subscribed/4, unsubscribed/1, info/3, completed/2, nack/1, try_deliver/1, disconnected/1, resumed/1]).

-define(TAB, emqx_double_extsub_handlers).
-define(ST, extsub_st).
-define(MAX_UNACKED, 10).
-define(RETRY_MS, 100).

%% @doc Creates the registry table (owned by the double's table owner).
start() ->
    case ets:whereis(?TAB) of
        undefined -> ets:new(?TAB, [named_table, public, set]);
        _ -> ets:delete_all_objects(?TAB)
    end,
    ok.

register(Mod, Opts) ->
    case ets:insert_new(?TAB, {Mod, Opts}) of
        true -> ok;
        false -> {error, extsub_handler_already_registered}
    end.

unregister(Mod) ->
    catch ets:delete(?TAB, Mod),
    ok.

st() ->
    case get(?ST) of
        %% delivering: per handler, messages handed to extsub and not completed.
        undefined -> #{handlers => #{}, buffer => gb_trees:empty(), seq => 0, unacked => #{}, retry => false,
                       delivering => #{}};
        S -> S
    end.

put_st(S) -> put(?ST, S).

%% @doc After session.subscribed of a new subscription (or a resume).
subscribed(CI, TF, SubOpts, Type) ->
    lists:foreach(
        fun({Mod, Opts}) ->
            Ref = make_ref(),
            Chan = self(),
            Ctx = #{clientinfo => CI, conninfo_fn => fun(_) -> undefined end, subopts => SubOpts,
                    can_receive_acks => true,
                    send_after => fun(Ms, Info) -> erlang:send_after(Ms, Chan, {extsub_info, Ref, Info}) end,
                    send => fun(Info) -> Chan ! {extsub_info, Ref, Info}, ok end},
            case Mod:handle_subscribe(Type, Ctx, undefined, TF) of
                {ok, HSt} ->
                    #{handlers := Hs} = S = st(),
                    Size = maps:get(buffer_size, Opts, 100),
                    put_st(S#{handlers := Hs#{Ref => #{mod => Mod, st => HSt, tf => TF, subopts => SubOpts,
                                                       size => Size}}});
                ignore ->
                    ok
            end
        end,
        ets:tab2list(?TAB)
    ).

%% @doc The client unsubscribed from TF: its handlers end.
unsubscribed(TF) ->
    #{handlers := Hs} = st(),
    maps:foreach(
        fun(Ref, #{mod := Mod, st := HSt, tf := T, subopts := SubOpts}) when T =:= TF ->
                _ = Mod:handle_unsubscribe(unsubscribe, #{subopts => SubOpts}, HSt, TF),
                destroy(Ref);
           (_, _) ->
                ok
        end,
        Hs
    ).

%% @doc A message sent through a handler's ctx funs.
info(Ref, Info, St) ->
    #{handlers := Hs} = S = st(),
    case maps:find(Ref, Hs) of
        {ok, #{mod := Mod, st := HSt} = H} ->
            Ctx = #{desired_message_count => desired(Ref, H, S), delivering_count => delivering(Ref, S)},
            case Mod:handle_info(HSt, Ctx, Info) of
                {ok, HSt1} ->
                    put_st(S#{handlers := Hs#{Ref := H#{st := HSt1}}}),
                    St;
                {ok, HSt1, Msgs} ->
                    put_st(add(Ref, H, Msgs, S#{handlers := Hs#{Ref := H#{st := HSt1}}})),
                    try_deliver(St);
                Destroy when Destroy =:= destroy; element(1, Destroy) =:= destroy ->
                    destroy(Ref),
                    St
            end;
        error ->
            St
    end.

add(Ref, #{tf := TF}, Msgs, S0) ->
    S = lists:foldl(
        fun(Msg, #{buffer := B, seq := Seq} = Acc) ->
            M = emqx_message:set_header(extsub, {Ref, Seq + 1}, Msg),
            Acc#{buffer := gb_trees:insert(Seq + 1, {Ref, TF, M}, B), seq := Seq + 1}
        end,
        S0,
        Msgs
    ),
    count(Ref, length(Msgs), S).

count(Ref, N, #{delivering := D} = S) ->
    S#{delivering := D#{Ref => maps:get(Ref, D, 0) + N}}.

delivering(Ref, #{delivering := D}) ->
    maps:get(Ref, D, 0).

desired(Ref, #{size := Size}, S) ->
    case delivering(Ref, S) < Size of
        true -> Size;
        false -> 0
    end.

%% @doc Hands buffered messages to the session as far as it has room.
try_deliver(St) ->
    #{unacked := U} = st(),
    Room = max(?MAX_UNACKED - map_size(U), maps:get(max_inflight, St) - length(maps:get(inflight, St))),
    deliver_n(Room, St).

deliver_n(0, St) ->
    St;
deliver_n(N, St) ->
    #{buffer := B, unacked := U} = S = st(),
    case gb_trees:is_empty(B) of
        true ->
            St;
        false ->
            {Seq, {Ref, TF, Msg}, B1} = gb_trees:take_smallest(B),
            put_st(S#{buffer := B1, unacked := U#{Seq => Ref}}),
            St1 = emqx_double:deliver(TF, Msg, St),
            case gb_trees:is_defined(Seq, maps:get(buffer, st())) of
                true -> St1;
                false -> deliver_n(N - 1, St1)
            end
    end.

%% @doc message.nack: the session could not take an extsub message; it goes
%% back into the buffer under its sequence id. true when it was ours.
nack(Msg) ->
    case emqx_message:get_header(extsub, Msg, undefined) of
        {Ref, Seq} ->
            #{buffer := B, unacked := U, handlers := Hs} = S = st(),
            case maps:find(Ref, Hs) of
                {ok, #{tf := TF}} ->
                    put_st(S#{buffer := gb_trees:enter(Seq, {Ref, TF, Msg}, B), unacked := maps:remove(Seq, U)}),
                    retry_later();
                error ->
                    put_st(S#{unacked := maps:remove(Seq, U)})
            end,
            true;
        _ ->
            false
    end.

retry_later() ->
    #{retry := R} = S = st(),
    case R of
        true -> ok;
        false ->
            erlang:send_after(?RETRY_MS, self(), extsub_retry),
            put_st(S#{retry := true})
    end.

%% @doc delivery.completed in the channel.
completed(Msg, St) ->
    case emqx_message:get_header(extsub, Msg, undefined) of
        {Ref, Seq} ->
            #{unacked := U0} = S0 = st(),
            S = count(Ref, -1, S0#{unacked := maps:remove(Seq, U0)}),
            put_st(S),
            #{handlers := Hs} = S,
            case maps:find(Ref, Hs) of
                {ok, #{mod := Mod, st := HSt} = H} ->
                    Ctx = #{unacked_count => map_size(maps:get(unacked, S)), delivering_count => delivering(Ref, S),
                            desired_message_count => desired(Ref, H, S), qos => emqx_message:qos(Msg)},
                    case Mod:handle_delivered(HSt, Ctx, Msg, 0) of
                        {ok, HSt1} -> put_st(S#{handlers := Hs#{Ref := H#{st := HSt1}}});
                        _Destroy -> destroy(Ref)
                    end;
                error ->
                    ok
            end,
            try_deliver(St);
        _ ->
            St
    end.

destroy(Ref) ->
    #{handlers := Hs, buffer := B} = S = st(),
    case maps:take(Ref, Hs) of
        {#{mod := Mod, st := HSt}, Rest} ->
            erlang:function_exported(Mod, handle_terminate, 1) andalso Mod:handle_terminate(HSt),
            B1 = gb_trees:from_orddict([E || {_, {R, _, _}} = E <- gb_trees:to_list(B), R =/= Ref]),
            put_st(S#{handlers := Rest, buffer := B1});
        error ->
            ok
    end.

%% @doc The client went away (session kept): each handler's saved term goes
%% into its subscription's options, and the handlers end.
disconnected(#{subs := Subs} = St) ->
    #{handlers := Hs} = st(),
    Subs1 = maps:fold(
        fun(Ref, #{mod := Mod, st := HSt, tf := TF, subopts := SubOpts}, Acc) ->
            Saved =
                case erlang:function_exported(Mod, handle_save_subopts, 3) andalso
                    Mod:handle_save_subopts(HSt, #{topic_filter => TF}, SubOpts) of
                    {ok, _, Term} -> #{Mod => Term};
                    _ -> #{}
                end,
            HSt1 = Mod:handle_unsubscribe(disconnect, #{subopts => SubOpts}, HSt, TF),
            #{handlers := H0} = S = st(),
            put_st(S#{handlers := maps:update(Ref, (maps:get(Ref, H0))#{st := HSt1}, H0)}),
            destroy(Ref),
            case maps:find(TF, Acc) of
                {ok, O} -> Acc#{TF := O#{emqx_extsub => Saved}};
                error -> Acc
            end
        end,
        Subs,
        Hs
    ),
    St#{subs := Subs1}.

%% @doc session.resumed ran in this (new) channel: the handlers come back.
resumed(#{subs := Subs, clientinfo := CI} = St) ->
    maps:foreach(
        fun(TF, SubOpts) ->
            Saved = maps:get(emqx_extsub, SubOpts, #{}),
            subscribed(CI, TF, maps:merge(maps:remove(emqx_extsub, SubOpts), Saved), resume)
        end,
        Subs
    ),
    St.
